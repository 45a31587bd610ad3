"""Index builds of video embeddings (contract D): the folder layout (:mod:`.layout`), the FAISS
layer (:mod:`.faiss_index`, :mod:`.shards`), the read side (:mod:`.reader`: open ``current``, fall
back to the newest verified build, check a build against a model), the write side
(:mod:`.writer`: stage, publish, prune, build from a model; :mod:`.cli`, ``python -m
retrieval.index``, which prints a build in plain words with :mod:`.describe`), the serving-run
record (:mod:`.serving`) and the embeddings export (:mod:`.export`).

Contract: the read side (``reader``, ``layout``, ``faiss_index``, ``shards``, ``serving``,
``export``) never imports the write side (``writer``, ``cli``, :mod:`retrieval.reindex`). This
file imports nothing, so importing a reader never loads a writer.
"""
