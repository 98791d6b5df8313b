"""The diffusion purifier: DiffPure with a trained denoiser, plus optional ensembling, unsharp
masking, and a perturbation detector that can leave clean-looking images alone (gate) and pick
each image's noise level from its estimated perturbation strength (ramp). Shared by
``defense.Defense``, ``scripts/purify.py`` and the tuner."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import nn

from common.devices import resolve_device
from common.image_checks import check_images
from diffusion import load_denoiser, make_generator, purify
from diffusion.precision import compute_dtype
from purifier.config import PurifierConfig, check_config, load_default_config
from purifier.perturbation_detector import PerturbationDetector, load_detector, newest_detector
from purifier.tiling import fits_one_tile, tiled_apply_windows
from purifier.unsharp import unsharp_mask
from schedulers import make_scheduler, nearest_ddim_t_star


class DiffusionPurifier:
    """Purify float ``(B, 3, H, W)`` images in [0, 1] -> same shape, dtype and device, in [0, 1].

    Each call noises each input to its noise level, runs the kept reverse steps with ``model``
    (``config.ensemble`` times, averaged), then applies unsharp masking if
    ``config.unsharp_amount > 0``. The noise level is ``config.t_star`` unless
    ``config.t_star_max > 0``: then a ``detector`` estimates each image's perturbation strength
    and ``config.noise_level`` maps it onto ``[t_star, t_star_max]``. With ``config.gate > 0``
    images estimated below the gate are returned unchanged. ``plan`` gives the per-image
    decision; ``purify_all`` skips it and uses ``t_star``. Decisions are per whole image (also
    when tiled). All randomness comes from one generator owned by the purifier (``seed``: int
    for a reproducible sequence of calls, None for OS entropy) and advanced by every call; a
    call may pass its own ``generator`` instead. Autograd is left to the caller: wrap in
    ``torch.no_grad()`` for inference, or keep gradients for adaptive attacks (the detector's
    decision itself is not differentiated). Each purifier owns its scheduler instances.
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
        self.config = load_default_config() if config is None else check_config(config)
        if self.config.uses_detector and detector is None:
            raise ValueError(
                f"gate={self.config.gate}, t_star_max={self.config.t_star_max} need a "
                "perturbation detector; pass detector= or set gate=0 and t_star_max=0"
            )
        self.detector = detector if self.config.uses_detector else None
        self.scheduler_config = scheduler_config
        self._chains: dict[int, tuple[SchedulerMixin, list[int]]] = {}
        self.scheduler, self.timesteps = self.chain(self.config.t_star)
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
        config uses the detector (gate or ramp), the detector folder ``detector`` (default: the
        newest released ``detector-v<N>`` beside ``folder``)."""
        model, scheduler_config = load_denoiser(folder, resolve_device(device))
        config = load_default_config() if config is None else check_config(config)
        strength_detector = None
        if config.uses_detector:
            folder_or_newest = detector or newest_detector(Path(folder).parent)
            strength_detector = load_detector(folder_or_newest, device)
        return cls(model, scheduler_config, config, seed, strength_detector)

    @property
    def device(self) -> torch.device:
        """Where the denoiser runs (inputs elsewhere are moved there and back)."""
        return next(self.model.parameters()).device

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The denoiser's autocast dtype on its current device (``config.precision``; None:
        plain float32)."""
        return compute_dtype(self.config.precision, self.device)

    def __repr__(self) -> str:
        knobs = ", ".join(f"{k}={v!r}" for k, v in self.config.to_dict().items())
        return f"DiffusionPurifier({knobs}, timesteps={self.timesteps})"

    def chain(self, t_star: int) -> tuple[SchedulerMixin, list[int]]:
        """``(scheduler, kept timesteps)`` of the chain starting at noise level ``t_star``
        (snapped to the DDIM grid for ``ddim``; ``config.t_star`` is already on it), built once
        and cached."""
        if t_star not in self._chains:
            c = self.config
            self._chains[t_star] = make_scheduler(
                c.sampler, t_star, c.steps, c.spacing, self.scheduler_config, snap_to_grid=True
            )
        return self._chains[t_star]

    def plan(self, images: torch.Tensor) -> list[int]:
        """Each image's noise level (``t_star`` for all without a detector; for ``ddim`` the grid
        level its chain starts from), 0 for images the gate leaves unchanged. ``ValueError``
        for bad images."""
        check_images(images)
        c = self.config
        if self.detector is None:
            return [c.t_star] * images.shape[0]
        strengths = self.detector.estimate(images.detach()).tolist()
        levels = [0 if s < c.gate else c.noise_level(s) for s in strengths]
        if c.sampler == "ddim":
            levels = [nearest_ddim_t_star(t, c.steps) if t else 0 for t in levels]
        return levels

    def flags(self, images: torch.Tensor) -> torch.Tensor:
        """``(B,)`` bool on ``images.device``: which images are purified (all of them when
        ``gate`` is 0). ``ValueError`` for bad images."""
        return torch.tensor([t > 0 for t in self.plan(images)], device=images.device)

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Purified copy of ``images`` (float ``(B, 3, H, W)`` in [0, 1], any float dtype, any
        ``H, W >= 1``): same shape, dtype and device; images the gate passes are copied
        unchanged. ``ValueError`` naming the problem for anything else
        (``image_checks.check_images``: nothing is converted silently)."""
        check_generator(generator)
        return self._planned(images, lambda x, t: self.purify_all(x, generator, t))

    def tiled(
        self,
        images: torch.Tensor,
        tile: int,
        overlap: int,
        generator: torch.Generator | None = None,
        desc: str | None = None,
    ) -> torch.Tensor:
        """``__call__`` with images larger than ``tile`` purified in overlapping tiles
        (``purifier.tiling.tiled_apply_windows``, ``desc`` names its progress bar); gate and
        noise level are decided on each whole image, so all tiles of a photo are treated
        alike. The start noise of each run is drawn once for the whole image and each tile
        takes its crop, so the overlaps blend one noise field, not two independent ones (which
        would leave bands of lower grain along the seams). Later steps of a multi-step DDPM
        chain draw per tile."""
        check_generator(generator)

        def purify_tiles(x: torch.Tensor, t_star: int) -> torch.Tensor:
            if fits_one_tile(x, tile):  # no whole-image noise draw: same noise as untiled
                return self.purify_all(x, generator, t_star)
            draw = self.generator if generator is None else generator
            noise = torch.randn(
                (self.config.ensemble, *x.shape), generator=draw, device=draw.device
            )

            def purify_tile(piece: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
                return self.purify_all(piece, generator, t_star, noise[..., rows, cols])

            return tiled_apply_windows(x, purify_tile, tile, overlap, desc)

        return self._planned(images, purify_tiles)

    def _planned(
        self, images: torch.Tensor, purify: Callable[[torch.Tensor, int], torch.Tensor]
    ) -> torch.Tensor:
        """``purify(batch, t_star)`` applied to the images of each noise level in ``plan``
        (in increasing order); images planned 0 are copied unchanged."""
        plan = self.plan(images)
        levels = sorted(set(plan) - {0})
        if levels and len(set(plan)) == 1:
            return purify(images, levels[0])
        out = images.clone()
        for level in levels:
            chosen = torch.tensor([t == level for t in plan], device=images.device)
            out[chosen] = purify(images[chosen], level)
        return out

    def purify_all(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        t_star: int | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``__call__`` without the detector: every image is purified from noise level
        ``t_star`` (default ``config.t_star``). ``noise`` ``(ensemble, B, 3, H, W)``, standard
        normal, gives each run's start noise (else drawn from the generator)."""
        check_images(images)
        check_generator(generator)
        generator = self.generator if generator is None else generator
        scheduler, timesteps = self.chain(self.config.t_star if t_star is None else t_star)
        x = images.to(self.device)
        if noise is not None and noise.shape != (self.config.ensemble, *images.shape):
            raise ValueError(
                f"noise {tuple(noise.shape)} must be (ensemble, *images.shape) = "
                f"{(self.config.ensemble, *images.shape)}"
            )
        total, autocast_dtype = None, self.autocast_dtype
        for k in range(self.config.ensemble):
            start = None if noise is None else noise[k]
            run = purify(x, self.model, scheduler, timesteps, generator, start, autocast_dtype)
            total = run if total is None else total + run
        purified = total / self.config.ensemble if self.config.ensemble > 1 else total
        purified = unsharp_mask(purified, self.config.unsharp_amount, self.config.unsharp_radius)
        return purified.to(device=images.device, dtype=images.dtype)


def check_generator(generator: object) -> None:
    """``ValueError`` unless ``generator`` is None or a ``torch.Generator`` (an int would be
    re-seeded by every ensemble run, so all runs would draw the same noise)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}; "
            "seed the purifier instead (seed=...)"
        )
