"""The defense the competition harness imports: ``Defense(device).apply_defense(images)``.

A thin wrapper around ``purifier.DiffusionPurifier`` (DiffPure with the project's small
DDPM denoiser). The weights are the newest released ``weights/ddpm-v<N>`` folder beside this
file unless ``weights`` names another folder.
"""

from __future__ import annotations

from pathlib import Path

import torch

from common.devices import resolve_device
from purifier import (
    DiffusionPurifier,
    PurifierConfig,
    check_config,
    load_default_config,
    resolve_detector,
    resolve_weights,
)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_TILE = 2048
"""Images with a side above this are purified in overlapping tiles of at most this size."""
TILE_OVERLAP = 32


class Defense:
    """Purify float ``(B, 3, H, W)`` images in [0, 1]; returns the same shape, dtype and device.

    Any batch size ``B >= 1`` and any ``H x W`` (1 x 1 and odd sizes too: the denoiser pads
    internally). Any float dtype: the denoiser runs in float32 (its convolutions in bfloat16
    where ``precision`` says so) and the result is cast back
    (float64 in, float64 out). Anything else raises ``ValueError`` naming the problem and the
    fix (``image_checks``): uint8 (divide by 255), 1 or 4 channels (tensors are never
    converted silently), a missing batch axis, NaN/Inf, values outside [0, 1], an empty batch.
    Images up to ``tile`` pixels on both sides are processed whole (in float32 about 340 bytes
    per pixel without autograd, ~1.4 GB at 2048 x 2048; about 2.3 KB per pixel with
    autograd); larger ones in overlapping ``tile x tile`` tiles blended without seams
    (``purifier.tiling``; a 4000 x 3000 photo peaks at 2.5 GiB with bfloat16, 3.1 GiB in
    float32, 0.6 of it the start noise of the 4 runs drawn for the whole photo so that the
    tiles share it; 3.9 GB whole in float32). Knobs left as None take
    their default from ``purifier/defaults.json`` (written by ``scripts/tune.py``; its record
    is ``defaults.provenance.json``), else ``purifier.PROVISIONAL_DEFAULTS``; a given
    ``t_star`` moves the default noise-level ramp with it and ``sampler="ddim"`` snaps the
    default ``t_star`` to a DDIM grid (``PurifierConfig.override``). See
    ``purifier.PurifierConfig`` for each knob.

    Args:
        device: where the denoiser runs.
        t_star, steps, sampler, spacing, ensemble, unsharp_amount, unsharp_radius, gate,
            t_star_max, strength_ramp, precision: knobs of ``PurifierConfig``; ValueError for
            bad values. ``precision`` ``"auto"`` (the default) runs the denoiser in bfloat16
            autocast where the hardware has native bfloat16, else float32; ``"float32"``
            does the same arithmetic on every machine (pixels differ only by the float
            rounding of each machine's convolution kernels).
        seed: None (default) seeds the noise generator from OS entropy, so every call draws
            fresh noise; an int makes the sequence of calls reproducible: the same calls
            with the same batches give the same pixels. One image's noise depends on the
            batch it came in (one generator serves the batch), so for per-image
            reproducibility call once per image (``scripts/purify.py --seed`` does so).
        weights: denoiser folder; None picks the newest released ``weights/ddpm-v<N>``
            (``purifier.MissingWeightsError`` if there is none).
        detector: perturbation-detector folder used when ``gate > 0`` or ``t_star_max > 0``
            (the knobs' ``uses_detector``); None picks the newest released
            ``detector-v<N>`` beside the weights folder, else the newest in ``weights/``
            (so a fine-tuned folder anywhere works with the shipped detector).
        config: a whole ``PurifierConfig`` to start from instead of the defaults.
        tile: largest side processed whole (default ``DEFAULT_TILE``); None never tiles.

    ``apply_defense`` does not disable autograd: the harness calls it under
    ``torch.no_grad()``; with gradients enabled it is differentiable end to end.
    """

    def __init__(
        self,
        device: str | torch.device = "cpu",
        *,
        t_star: int | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        spacing: str | None = None,
        ensemble: int | None = None,
        unsharp_amount: float | None = None,
        unsharp_radius: float | None = None,
        gate: float | None = None,
        t_star_max: int | None = None,
        strength_ramp: float | None = None,
        precision: str | None = None,
        seed: int | None = None,
        weights: str | Path | None = None,
        detector: str | Path | None = None,
        config: PurifierConfig | None = None,
        tile: int | None = DEFAULT_TILE,
    ) -> None:
        self.device = resolve_device(device)
        if tile is not None and (
            not isinstance(tile, int) or isinstance(tile, bool) or tile <= 2 * TILE_OVERLAP
        ):
            raise ValueError(f"tile must be None or an int > {2 * TILE_OVERLAP}, got {tile!r}")
        self.tile = tile
        base = load_default_config() if config is None else check_config(config)
        self.config = base.override(
            t_star=t_star,
            steps=steps,
            sampler=sampler,
            spacing=spacing,
            ensemble=ensemble,
            unsharp_amount=unsharp_amount,
            unsharp_radius=unsharp_radius,
            gate=gate,
            t_star_max=t_star_max,
            strength_ramp=strength_ramp,
            precision=precision,
        )
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        self.weights = resolve_weights(weights, WEIGHTS_DIR)
        if self.config.uses_detector:
            detector = resolve_detector(detector, self.weights, WEIGHTS_DIR)
        self.purifier = DiffusionPurifier.from_pretrained(
            self.weights, self.device, self.config, seed, detector
        )

    def __repr__(self) -> str:
        return (
            f"Defense(device={str(self.device)!r}, weights={str(self.weights)!r}, {self.purifier})"
        )

    def apply_defense(self, images: torch.Tensor) -> torch.Tensor:
        """Purified copy of float ``(B, 3, H, W)`` images in [0, 1]: same shape, dtype and
        device, values in [0, 1]. ``ValueError`` for any other input (see the class doc)."""
        if self.tile is None:
            return self.purifier(images)
        return self.purifier.tiled(images, self.tile, TILE_OVERLAP)
