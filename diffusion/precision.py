"""The denoiser's arithmetic precision: float32, or bfloat16 autocast where the hardware runs it
natively (Intel AMX / AVX512-BF16 CPUs, CUDA GPUs of compute capability 8.0 and up).

Only the network's convolutions run in bfloat16 (``torch.autocast``); the schedule math, the
noise and the images stay float32. On a machine without native bfloat16, autocast is emulated
and slower than float32, which is why ``"auto"`` checks the hardware first.
"""

from __future__ import annotations

import torch

PRECISIONS = ("auto", "float32", "bfloat16")


def has_native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 matrix products in hardware."""
    if device.type == "cpu":
        flags = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(torch.cpu, flag, lambda: False)() for flag in flags)
    if device.type == "cuda":  # Ampere (compute capability 8) and later, this very device
        return torch.cuda.get_device_capability(device)[0] >= 8
    return False


def check_precision(precision: object) -> None:
    """``ValueError`` unless ``precision`` is one of ``PRECISIONS``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def compute_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for the denoiser on ``device``: ``torch.bfloat16``, or None for
    plain float32. ``"auto"`` is bfloat16 when ``has_native_bfloat16(device)``.
    ``ValueError`` for a precision not in ``PRECISIONS``."""
    check_precision(precision)
    if precision == "float32":
        return None
    if precision == "bfloat16" or has_native_bfloat16(device):
        return torch.bfloat16
    return None
