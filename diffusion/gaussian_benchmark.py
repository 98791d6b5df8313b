"""Gaussian-denoising figures shared by training validation and ``scripts/eval_denoiser.py``:
seeded additive noise and mean PSNR (scikit-image, ``data_range=1``)."""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange
from skimage.metrics import peak_signal_noise_ratio


def add_gaussian_noise(
    images: torch.Tensor, sigma: float, generator: torch.Generator
) -> torch.Tensor:
    """``images + sigma * N(0, 1)`` for float ``(B, 3, H, W)`` in [0, 1]; not clipped (the
    usual AWGN benchmark), so the result may leave [0, 1]."""
    noise = torch.randn(images.shape, generator=generator, device=generator.device)
    return images + sigma * noise.to(device=images.device, dtype=images.dtype)


def mean_psnr(estimates: torch.Tensor, references: torch.Tensor) -> float:
    """Mean over the batch of PSNR in dB between ``(B, 3, H, W)`` tensors in [0, 1]."""
    if estimates.shape != references.shape:
        raise ValueError(f"shape mismatch {tuple(estimates.shape)} vs {tuple(references.shape)}")
    est = _to_numpy(estimates.clamp(0, 1))
    ref = _to_numpy(references)
    scores = [peak_signal_noise_ratio(r, e, data_range=1.0) for r, e in zip(ref, est, strict=True)]
    return float(np.mean(scores))


def _to_numpy(images: torch.Tensor) -> np.ndarray:
    return rearrange(images.detach().double().cpu(), "b c h w -> b h w c").numpy()
