"""The diffusion purifier: DiffPure with a trained denoiser, plus optional ensembling, unsharp
masking and a detector gate. Shared by ``defense.Defense``, ``scripts/purify.py`` and the
tuner."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from diffusion import load_denoiser, make_generator, purify
from model import check_images
from purifier.config import PurifierConfig, load_default_config
from purifier.perturbation_detector import PerturbationDetector, load_detector, newest_detector
from purifier.tiling import tiled_apply
from purifier.unsharp import unsharp_mask
from schedulers import make_scheduler


class DiffusionPurifier:
    """Purify float ``(B, 3, H, W)`` images in [0, 1] -> same shape, dtype and device, in [0, 1].

    Each call noises the input to ``config.t_star``, runs the kept reverse steps with ``model``
    (``config.ensemble`` times, averaged), then applies unsharp masking if
    ``config.unsharp_amount > 0``. With ``config.gate > 0`` a ``detector`` first estimates
    each image's perturbation strength and images below the gate are returned unchanged
    (``flags``); ``purify_all`` skips the gate. All randomness comes from one generator owned by the
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
        detector: PerturbationDetector | None = None,
    ) -> None:
        self.model = model
        self.config = load_default_config() if config is None else config
        if self.config.gate > 0 and detector is None:
            raise ValueError(
                f"gate={self.config.gate} needs a perturbation detector; pass detector= "
                "or set gate=0 to purify every image"
            )
        self.detector = detector if self.config.gate > 0 else None
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
        detector: str | Path | None = None,
    ) -> DiffusionPurifier:
        """Load the denoiser in ``folder`` (manifest checked) onto ``device``, and, when the
        config's ``gate > 0``, the detector folder ``detector`` (default: the newest released
        ``detector-v<N>`` beside ``folder``)."""
        model, scheduler_config = load_denoiser(folder, device)
        config = load_default_config() if config is None else config
        gate_detector = None
        if config.gate > 0:
            gate_detector = load_detector(detector or newest_detector(Path(folder).parent), device)
        return cls(model, scheduler_config, config, seed, gate_detector)

    @property
    def device(self) -> torch.device:
        """Where the denoiser runs (inputs elsewhere are moved there and back)."""
        return next(self.model.parameters()).device

    def __repr__(self) -> str:
        knobs = ", ".join(f"{k}={v!r}" for k, v in self.config.to_dict().items())
        return f"DiffusionPurifier({knobs}, timesteps={self.timesteps})"

    def flags(self, images: torch.Tensor) -> torch.Tensor:
        """``(B,)`` bool on ``images.device``: which images the gate sends to purification
        (all of them when ``gate`` is 0). ``ValueError`` for bad images."""
        check_images(images)
        if self.detector is None:
            return torch.ones(images.shape[0], dtype=torch.bool, device=images.device)
        strength = self.detector.estimate(images.detach())
        return (strength >= self.config.gate).to(images.device)

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Purified copy of ``images`` (float ``(B, 3, H, W)`` in [0, 1], any float dtype, any
        ``H, W >= 1``): same shape, dtype and device; images the gate passes are copied
        unchanged. ``ValueError`` naming the problem for anything else
        (``image_checks.check_images``: nothing is converted silently)."""
        return self._gated(images, lambda x: self.purify_all(x, generator))

    def tiled(
        self,
        images: torch.Tensor,
        tile: int,
        overlap: int,
        generator: torch.Generator | None = None,
        desc: str | None = None,
    ) -> torch.Tensor:
        """``__call__`` with images larger than ``tile`` purified in overlapping tiles
        (``purifier.tiled_apply``, ``desc`` names its progress bar); the gate decides on each
        whole image, so a photo is never purified in some tiles and left alone in others."""

        def purify_tile(x: torch.Tensor) -> torch.Tensor:
            return self.purify_all(x, generator)

        return self._gated(images, lambda x: tiled_apply(x, purify_tile, tile, overlap, desc=desc))

    def _gated(
        self, images: torch.Tensor, purify: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """``purify`` applied to the images ``flags`` selects; the others copied unchanged."""
        flags = self.flags(images)
        if bool(flags.all()):
            return purify(images)
        out = images.clone()
        if bool(flags.any()):
            out[flags] = purify(images[flags])
        return out

    def purify_all(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``__call__`` without the gate: every image is purified."""
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
