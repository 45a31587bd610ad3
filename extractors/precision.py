"""Numeric precision of the extractors' models: the names (``fp32``, ``fp16``, ``bf16``), their
torch dtypes, and what ``auto`` means on a device.

Extraction runs in ``fp16`` on CUDA and ``fp32`` elsewhere unless told otherwise; query encoding
(:func:`extractors.registry.build_text_encoder`) may also use ``bf16``.
"""
from __future__ import annotations

import torch

PRECISION_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN reports bf16 support on this CPU (AVX-512 or better); elsewhere PyTorch
    emulates bf16 matrix products, which may be slower than fp32. False when torch cannot tell."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``fp16`` on CUDA, ``fp32`` elsewhere (extraction; query encoding may also use bf16)."""
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision not in ("fp16", "fp32"):
        raise ValueError(f"precision {precision!r}: expected auto, fp16 or fp32")
    return precision
