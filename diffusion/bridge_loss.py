"""The bridge objective: noise the *attacked* image, predict the noise leading to the *clean* one.

Purification noises its input ``x_a = x_0 + delta`` (clean image plus adversarial perturbation)
to step ``t``, ``x_t = sqrt(abar_t) x_a + sqrt(1 - abar_t) eps``, and trusts the network's
``x_0`` estimate ``(x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)``. That estimate is the
clean image exactly when

    eps_hat = eps + sqrt(abar_t / (1 - abar_t)) delta,

so the network is trained to explain the perturbation as part of the noise: a diffusion
bridge from the attacked to the clean distribution with the ordinary DDPM parameterisation and
sampler (after Li et al., "ADBM: Adversarial Diffusion Bridge Model for Reliable Adversarial
Purification", 2024). With ``delta = 0`` this is the usual epsilon loss.

Per-sample weights ``min(SNR_t, gamma) / SNR_t`` (Hang et al., "Efficient Diffusion Training via
Min-SNR Weighting Strategy", ICCV 2023) turn the loss into ``min(SNR_t, gamma) ||x0_hat - x_0||^2``
so the nearly noise-free steps, where ``delta`` dominates the target, do not swamp the rest.
``detail_weight`` adds ``min(SNR_t, gamma) ||highpass(x0_hat - x_0)||^2``, the error finer than
``detail_block`` pixels weighted once more: the perturbation that survives purification lives
there (``docs/attack_leak.md``). Tensors here are in the diffusion range [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from einops import repeat
from torch import nn


@dataclass(frozen=True)
class BridgeOutput:
    """``loss`` (scalar) and the network's clean estimate ``x0_hat`` ``(B, 3, H, W)`` in [-1, 1]
    (unclipped, differentiable)."""

    loss: torch.Tensor
    x0_hat: torch.Tensor


def bridge_epsilon_target(
    noise: torch.Tensor, clean: torch.Tensor, attacked: torch.Tensor, alpha_bar: torch.Tensor
) -> torch.Tensor:
    """``eps + sqrt(abar / (1 - abar)) (attacked - clean)``; ``alpha_bar`` is ``(B,)``, the
    images ``(B, 3, H, W)`` in [-1, 1]."""
    scale = (alpha_bar / (1.0 - alpha_bar)).sqrt().view(-1, 1, 1, 1)
    return noise + scale * (attacked - clean)


def min_snr_weights(alpha_bar: torch.Tensor, gamma: float) -> torch.Tensor:
    """``min(SNR, gamma) / SNR`` per sample, ``SNR = abar / (1 - abar)``; ``(B,)``."""
    if not gamma > 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    snr = alpha_bar / (1.0 - alpha_bar)
    return snr.clamp(max=gamma) / snr


def highpass(images: torch.Tensor, block: int) -> torch.Tensor:
    """``images`` minus the means of their ``block`` x ``block`` blocks (the last row/column of
    blocks may be smaller): the detail finer than ``block`` pixels; ``(B, C, H, W)`` -> same
    shape."""
    if block < 2:
        raise ValueError(f"block must be >= 2, got {block}")
    height, width = images.shape[-2:]
    coarse = F.avg_pool2d(images, block, stride=block, ceil_mode=True)
    means = repeat(coarse, "b c h w -> b c (h bh) (w bw)", bh=block, bw=block)
    return images - means[..., :height, :width]


def bridge_loss(
    model: nn.Module,
    scheduler: DDPMScheduler,
    clean: torch.Tensor,
    attacked: torch.Tensor,
    timesteps: torch.Tensor,
    generator: torch.Generator,
    snr_gamma: float = 5.0,
    detail_weight: float = 0.0,
    detail_block: int = 4,
) -> BridgeOutput:
    """Min-SNR-weighted bridge loss for pairs ``clean``/``attacked`` ``(B, 3, H, W)`` in [-1, 1]
    noised to ``timesteps`` ``(B,)``; noise drawn from ``generator``. ``detail_weight`` > 0
    adds the weighted error finer than ``detail_block`` pixels (see the module docstring)."""
    if detail_weight < 0:
        raise ValueError(f"detail_weight must be >= 0, got {detail_weight}")
    if clean.shape != attacked.shape or clean.dim() != 4:
        raise ValueError(
            f"clean and attacked must be (B, 3, H, W) of one shape, got "
            f"{tuple(clean.shape)} and {tuple(attacked.shape)}"
        )
    if timesteps.shape != clean.shape[:1]:
        raise ValueError(f"timesteps must be ({clean.shape[0]},), got {tuple(timesteps.shape)}")
    timesteps = timesteps.to(clean.device)
    alpha_bar = scheduler.alphas_cumprod.to(clean.device)[timesteps].float()
    noise = torch.randn(clean.shape, generator=generator, device=generator.device)
    noise = noise.to(device=clean.device, dtype=clean.dtype)
    noisy = scheduler.add_noise(attacked, noise, timesteps)
    predicted = model(noisy, timesteps).float()
    target = bridge_epsilon_target(noise.float(), clean.float(), attacked.float(), alpha_bar)
    weights = min_snr_weights(alpha_bar, snr_gamma)
    per_sample = (predicted - target).pow(2).mean(dim=(1, 2, 3))
    root = alpha_bar.sqrt().view(-1, 1, 1, 1)
    x0_hat = (noisy.float() - (1.0 - alpha_bar).sqrt().view(-1, 1, 1, 1) * predicted) / root
    if detail_weight > 0:
        # weights * SNR = min(SNR, gamma): the same scale as the x0 form of the main term
        snr = alpha_bar / (1.0 - alpha_bar)
        detail = highpass(x0_hat - clean.float(), detail_block).pow(2).mean(dim=(1, 2, 3))
        per_sample = per_sample + detail_weight * snr * detail
    loss = (weights * per_sample).mean()
    return BridgeOutput(loss=loss, x0_hat=x0_hat)
