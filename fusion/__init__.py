"""Fusion: retrieval models trained on the stored (frozen) features, and their use.

- models: ``registry.py`` (every model name -> class + config schema), ``configs/`` (defaults),
  ``schema.py``, ``config.py``, ``factory.py``; ``base.py`` (the interface), ``baselines.py``
  (zero-shot, meanP, seqTransf), ``m2hf.py``, ``hcmi.py``, ``clustering.py``, ``layers.py``, ``losses.py``;
- the loader: ``features.py`` (a dataset's features in memory), ``batches.py`` (padded model
  inputs), ``sampling.py`` (which frames fill a batch);
- training: ``train.py`` (``python -m fusion.train``), ``report.py``, ``ablation.py``;
- using a trained model: ``api.py`` (contract B), ``loaded.py``, ``encoding.py``, ``bundle.py``
  (reading a bundle) and ``export.py`` (``python -m fusion.export``, writing one).
"""
