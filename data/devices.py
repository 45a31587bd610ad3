"""Device resolution, one definition for extraction, training, encoding, search and loaded bundles.

``None`` means "as configured": ``$TVR_DEVICE`` (``data.settings``), default ``auto``.
"""
from __future__ import annotations

import torch

from data.settings import DEVICE_HELP, get_settings


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; ``None`` reads
    ``TVR_DEVICE``. CUDA asked for without a GPU is a ``ValueError``, not a silent fall-back."""
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or get_settings().device).strip()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r}: expected {DEVICE_HELP}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r}: expected {DEVICE_HELP}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: CUDA is not available here (use cpu or auto)")
    return device
