"""A run's moment head on disk: ``moment_head.pt`` (state dict + the head's description, which
config.json repeats as ``moment_head``) and ``moment_log.jsonl`` (one line per training epoch)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from data.atomic import atomic_path, write_text_atomic
from fusion.moments.head import MomentHead

HEAD_FILE = "moment_head.pt"
LOG_FILE = "moment_log.jsonl"


def save_head(folder: Path, head: MomentHead, log: list[dict]) -> None:
    """``moment_head.pt`` (state dict + description) and ``moment_log.jsonl`` in the run ``folder``."""
    with atomic_path(folder / HEAD_FILE) as tmp:
        torch.save({"model": head.state_dict(), "meta": json.dumps(head.meta)}, tmp)
    write_text_atomic(folder / LOG_FILE, "".join(json.dumps(e) + "\n" for e in log))


def load_head(folder: Path, meta: dict | None, device: torch.device) -> MomentHead | None:
    """The run's head on ``device`` when ``folder`` holds ``moment_head.pt``; ``meta``: its
    description from config.json (None: the one saved beside the weights)."""
    path = Path(folder) / HEAD_FILE
    if not path.is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=True)
    head = MomentHead(meta or json.loads(saved["meta"]))
    head.load_state_dict(saved["model"])
    return head.eval().to(device)
