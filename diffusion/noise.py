"""The one noise schedule of the project and the map between image noise std and timestep.

Linear betas 1e-4..0.02 over 1000 steps, epsilon prediction (Ho, Jain and Abbeel, "Denoising
Diffusion Probabilistic Models", NeurIPS 2020). All schedule arithmetic lives in diffusers;
this module only builds the configuration and reads ``alphas_cumprod``.

A Gaussian noise of std ``sigma`` on an image in [0, 1] is std ``2 sigma`` in [-1, 1], and
``x_t / sqrt(alphabar_t) = x_0 + sqrt(1 / alphabar_t - 1) eps``, so the matching step has
``alphabar = 1 / (1 + 4 sigma^2)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from diffusers import DDPMScheduler
from diffusers.configuration_utils import ConfigMixin

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 1e-4
BETA_END = 0.02


def ddpm_scheduler_config() -> dict[str, Any]:
    """Keyword arguments of the project's training ``DDPMScheduler`` (linear betas, epsilon)."""
    return {
        "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
        "beta_start": BETA_START,
        "beta_end": BETA_END,
        "beta_schedule": "linear",
        "prediction_type": "epsilon",
        "variance_type": "fixed_small",
        "clip_sample": True,
        "clip_sample_range": 1.0,
    }


def training_scheduler() -> DDPMScheduler:
    """A fresh ``DDPMScheduler`` with the project's training schedule."""
    return DDPMScheduler(**ddpm_scheduler_config())


def alpha_bar_for_sigma(sigma: float) -> float:
    """``alphabar`` whose noise matches std ``sigma`` (image units, [0, 1] range)."""
    if not sigma > 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be a positive finite number, got {sigma}")
    return 1.0 / (1.0 + 4.0 * sigma**2)


def sigma_to_timestep(sigma: float, scheduler: ConfigMixin | None = None) -> int:
    """Training step whose noise is closest (in log signal-to-noise ratio) to std ``sigma``
    in [0, 1] image units. ``scheduler`` defaults to the training schedule."""
    alphas_cumprod = _alphas_cumprod(scheduler)
    target = math.log(alpha_bar_for_sigma(sigma) / (1.0 - alpha_bar_for_sigma(sigma)))
    log_snr = torch.log(alphas_cumprod / (1.0 - alphas_cumprod))
    return int(torch.argmin((log_snr - target).abs()))


def timestep_to_sigma(timestep: int, scheduler: ConfigMixin | None = None) -> float:
    """Noise std in [0, 1] image units equivalent to training step ``timestep``."""
    alphas_cumprod = _alphas_cumprod(scheduler)
    if not 0 <= timestep < len(alphas_cumprod):
        raise ValueError(f"timestep must be in 0..{len(alphas_cumprod) - 1}, got {timestep}")
    alpha_bar = float(alphas_cumprod[timestep])
    return 0.5 * math.sqrt(1.0 / alpha_bar - 1.0)


def _alphas_cumprod(scheduler: ConfigMixin | None) -> torch.Tensor:
    scheduler = training_scheduler() if scheduler is None else scheduler
    return scheduler.alphas_cumprod.double()
