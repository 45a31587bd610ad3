"""The moment head: where in a video a query happens (docs/methods.md §8, docs/models.md "Moment head").

- :mod:`~fusion.moments.grid`: stored frames / audio / motion resampled onto a time grid per video;
- :mod:`~fusion.moments.head`: :class:`MomentHead` (step encoder, start / end detector, window match);
- :mod:`~fusion.moments.plan`: which caption windows train it (:func:`plan_head`);
- :mod:`~fusion.moments.training`: training, SVMR scores, the run folder's ``moments`` entries;
- :mod:`~fusion.moments.saved`: ``moment_head.pt`` / ``moment_log.jsonl`` (saved with the run, loaded
  by :func:`fusion.api.load_model`);
- :mod:`~fusion.moments.predict`: :class:`MomentPredictor` (moments of queries, segment vectors),
  exported by :mod:`fusion.api`.
"""
