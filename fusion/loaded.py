"""A model ready to encode (:class:`LoadedModel`): what :func:`fusion.api.load_model` returns for a
run folder or the zero-shot model, and :func:`fusion.bundle.load_bundle` for an exported bundle."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class LoadedModel:
    """The model in eval mode on its device, with what it was trained on."""

    model: torch.nn.Module
    name: str                          # the registered model name (fusion.registry)
    config: dict                       # its full, validated configuration
    run_dir: Path | None               # the run (or bundle) folder; None for the zero-shot model
    dataset: str                       # the dataset whose features it was trained on
    extractor_ids: dict[str, str]      # modality -> extractor-id of those features
    random_weights: bool               # the features came from randomly initialised extractors
    fine_grained: bool                 # FAISS holds coarse vectors, ``model.score`` re-ranks exactly
    text_extractor: dict | None = None  # a bundle's clip_text description (else read from the store)
    moments: torch.nn.Module | None = None  # the run's moment head (fusion.moments.head.MomentHead) when it
                                            # has one (moment_head.pt); read by fusion.api.MomentPredictor
