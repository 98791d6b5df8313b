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
Tensors here are in the diffusion range [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler
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


def bridge_loss(
    model: nn.Module,
    scheduler: DDPMScheduler,
    clean: torch.Tensor,
    attacked: torch.Tensor,
    timesteps: torch.Tensor,
    generator: torch.Generator,
    snr_gamma: float = 5.0,
) -> BridgeOutput:
    """Min-SNR-weighted bridge loss for pairs ``clean``/``attacked`` ``(B, 3, H, W)`` in [-1, 1]
    noised to ``timesteps`` ``(B,)``; noise drawn from ``generator``."""
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
    per_sample = (predicted - target).pow(2).mean(dim=(1, 2, 3))
    loss = (min_snr_weights(alpha_bar, snr_gamma) * per_sample).mean()
    root = alpha_bar.sqrt().view(-1, 1, 1, 1)
    x0_hat = (noisy.float() - (1.0 - alpha_bar).sqrt().view(-1, 1, 1, 1) * predicted) / root
    return BridgeOutput(loss=loss, x0_hat=x0_hat)
