"""The diffusion purifier: DiffPure with a trained denoiser, plus optional ensembling and
unsharp masking. Shared by ``defense.Defense``, ``scripts/purify.py`` and the tuner."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from diffusion import load_denoiser, make_generator, purify
from model import check_images
from purifier.config import PurifierConfig, load_default_config
from purifier.unsharp import unsharp_mask
from schedulers import make_scheduler


class DiffusionPurifier:
    """Purify float ``(B, 3, H, W)`` images in [0, 1] -> same shape, dtype and device, in [0, 1].

    Each call noises the input to ``config.t_star``, runs the kept reverse steps with ``model``
    (``config.ensemble`` times, averaged), then applies unsharp masking if
    ``config.unsharp_amount > 0``. All randomness comes from one generator owned by the
    purifier (``seed``: int for a reproducible sequence of calls, None for OS entropy) and
    advanced by every call; a call may pass its own ``generator`` instead. Autograd is left
    to the caller: wrap in ``torch.no_grad()`` for inference, or keep gradients for adaptive
    attacks. Each purifier owns its scheduler instance.
    """

    def __init__(
        self,
        model: nn.Module,
        scheduler_config: dict,
        config: PurifierConfig | None = None,
        seed: int | torch.Generator | None = None,
    ) -> None:
        self.model = model
        self.config = load_default_config() if config is None else config
        self.scheduler, self.timesteps = make_scheduler(
            self.config.sampler,
            self.config.t_star,
            self.config.steps,
            self.config.spacing,
            scheduler_config,
        )
        self.generator = make_generator(seed)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        device: str | torch.device = "cpu",
        config: PurifierConfig | None = None,
        seed: int | torch.Generator | None = None,
    ) -> DiffusionPurifier:
        """Load the denoiser in ``folder`` (manifest checked) onto ``device``."""
        model, scheduler_config = load_denoiser(folder, device)
        return cls(model, scheduler_config, config, seed)

    @property
    def device(self) -> torch.device:
        """Where the denoiser runs (inputs elsewhere are moved there and back)."""
        return next(self.model.parameters()).device

    def __repr__(self) -> str:
        knobs = ", ".join(f"{k}={v!r}" for k, v in self.config.to_dict().items())
        return f"DiffusionPurifier({knobs}, timesteps={self.timesteps})"

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Purified copy of ``images`` (float ``(B, 3, H, W)`` in [0, 1], any float dtype, any
        ``H, W >= 1``): same shape, dtype and device. ``ValueError`` naming the problem for
        anything else (``image_checks.check_images``: nothing is converted silently)."""
        check_images(images)
        generator = self.generator if generator is None else generator
        x = images.to(self.device)
        total = None
        for _ in range(self.config.ensemble):
            run = purify(x, self.model, self.scheduler, self.timesteps, generator)
            total = run if total is None else total + run
        purified = total / self.config.ensemble if self.config.ensemble > 1 else total
        purified = unsharp_mask(purified, self.config.unsharp_amount, self.config.unsharp_radius)
        return purified.to(device=images.device, dtype=images.dtype)
