"""Diffusion purification (Nie et al., "Diffusion Models for Adversarial Purification", ICML
2022): noise the input to the first kept step, then run the kept reverse steps.

Nothing here disables autograd: wrap the call in ``torch.no_grad()`` for plain inference, or
leave gradients on so an adaptive attack can differentiate through the whole chain.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import DDPMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import nn

from common.image_checks import check_images
from diffusion.noise import sigma_to_timestep


def make_generator(seed_or_generator: torch.Generator | int | None) -> torch.Generator:
    """A CPU ``torch.Generator``: the one given, one seeded with the int, or a freshly seeded
    one for ``None`` (the global RNG is never used)."""
    if isinstance(seed_or_generator, torch.Generator):
        return seed_or_generator
    generator = torch.Generator()
    if seed_or_generator is None:
        generator.seed()
    elif isinstance(seed_or_generator, int) and not isinstance(seed_or_generator, bool):
        if not -(2**63) <= seed_or_generator < 2**64:
            raise ValueError(f"an int seed must lie in [-2**63, 2**64), got {seed_or_generator}")
        generator.manual_seed(seed_or_generator)
    else:
        raise ValueError(
            f"expected a torch.Generator, an int seed or None, got {seed_or_generator!r}"
        )
    return generator


def purify(
    images: torch.Tensor,
    model: nn.Module,
    scheduler: SchedulerMixin,
    timesteps: Sequence[int],
    generator: torch.Generator | int | None = None,
    noise: torch.Tensor | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Purify ``(B, 3, H, W)`` images in [0, 1]; returns the same shape, dtype and device, in
    [0, 1].

    ``scheduler`` must already be configured (see ``schedulers.make_scheduler``) so that
    ``timesteps`` (descending) is the tail of ``scheduler.timesteps``; ``model`` predicts
    noise from ``(x_t, t)`` in [-1, 1]. All noise comes from ``generator`` (or an int seed),
    except the start noise when ``noise`` (standard normal, the images' shape) is given: a
    tile of a large image takes its crop of one whole-image draw. ``autocast_dtype`` (e.g.
    ``torch.bfloat16``, see ``diffusion.precision``) runs the network's forward under
    ``torch.autocast``; the schedule math stays in the model's dtype.
    """
    check_images(images)
    kept = [int(t) for t in timesteps]
    _check_timesteps(kept, scheduler)
    generator = make_generator(generator)
    dtype = next(model.parameters()).dtype
    clean = images.to(dtype) * 2.0 - 1.0
    if noise is None:
        noise = torch.randn(clean.shape, generator=generator, device=generator.device, dtype=dtype)
    elif noise.shape != clean.shape:
        raise ValueError(f"noise {tuple(noise.shape)} must match images {tuple(clean.shape)}")
    start = torch.full((clean.shape[0],), kept[0], dtype=torch.long, device=clean.device)
    sample = scheduler.add_noise(clean, noise.to(device=clean.device, dtype=dtype), start)
    for t in kept:
        with torch.autocast(
            clean.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
        ):
            eps = model(sample, t)
        eps = eps.to(dtype)
        sample = scheduler.step(eps, t, sample, generator=generator).prev_sample
    return ((sample + 1.0) * 0.5).clamp(0.0, 1.0).to(images.dtype)


def denoise_one_shot(
    noisy: torch.Tensor, model: nn.Module, scheduler_config: dict, sigma: float
) -> torch.Tensor:
    """Gaussian denoising in a single network call: treat ``noisy`` ``(B, 3, H, W)`` in [0, 1]
    (noise std ``sigma`` in [0, 1] units) as ``x_t`` at the matching step and return the
    predicted ``x_0`` in [0, 1]. Same shape, dtype and device; autograd is left to the caller.
    """
    if noisy.dim() != 4 or noisy.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) images, got shape {tuple(noisy.shape)}")
    if not noisy.is_floating_point():
        raise ValueError(f"expected float images in [0, 1], got dtype {noisy.dtype}")
    if not torch.isfinite(noisy).all():
        raise ValueError("noisy images hold NaN or inf values")
    scheduler = DDPMScheduler.from_config(scheduler_config)
    t = sigma_to_timestep(sigma, scheduler)
    scheduler.set_timesteps(timesteps=[t])
    dtype = next(model.parameters()).dtype
    scale = float(scheduler.alphas_cumprod[t]) ** 0.5
    sample = (noisy.to(dtype) * 2.0 - 1.0) * scale
    eps = model(sample, t)
    step = scheduler.step(eps, t, sample, generator=torch.Generator().manual_seed(0))
    return ((step.pred_original_sample + 1.0) * 0.5).clamp(0.0, 1.0).to(noisy.dtype)


def _check_timesteps(kept: list[int], scheduler: SchedulerMixin) -> None:
    if not kept:
        raise ValueError("timesteps is empty")
    grid = [int(t) for t in getattr(scheduler, "timesteps", [])]
    if len(kept) > len(grid) or grid[len(grid) - len(kept) :] != kept:
        raise ValueError(
            f"timesteps {kept[:5]}... are not the tail of the scheduler's configured grid "
            f"{grid[:5]}...: build both with schedulers.make_scheduler"
        )
