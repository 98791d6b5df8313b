"""Validation of image tensors at the public entry points (one place, one set of messages).

The convention for every public function that takes image tensors (``Defense.apply_defense``,
``DiffusionPurifier``, ``MetricModel.forward``, the attacks, the classical defenses and the
output check of ``test.py``):

- a ``torch.Tensor`` of shape ``(B, 3, H, W)``, ``B >= 1``, ``H, W >= 1`` (any size, 1 x 1 and
  odd sizes included; the blur and median baselines, whose reflect padding needs a second
  pixel, refuse a side of 1 with a ``ValueError``);
- floating point (float16, bfloat16, float32, float64); purifiers return the input's dtype,
  the metric scores in float32; integer tensors (uint8 included) are refused with a message
  saying to divide by 255;
- finite values in [0, 1] (a rounding slack of ``RANGE_SLACK`` is tolerated).

Tensors are never converted silently: a 1-channel (grey) or 4-channel (RGBA) tensor, a
``(3, H, W)`` image without a batch axis or a channels-last batch is refused with a
``ValueError`` that says which conversion to apply. Image *files* are different: their mode
says what the channels mean, so ``image_io.load_image`` turns grey into RGB (replicated) and
drops alpha.
"""

from __future__ import annotations

import torch

RANGE_SLACK = 1e-6
CONTRACT = "a float tensor (B, 3, H, W) with values in [0, 1]"


def check_images(images: torch.Tensor, name: str = "images") -> None:
    """Raise ``ValueError`` naming the problem unless ``images`` is a float ``(B, 3, H, W)``
    tensor, ``B, H, W >= 1``, finite, in [0, 1]. Never changes ``images``."""
    if not isinstance(images, torch.Tensor):
        hint = " (convert with torch.from_numpy)" if type(images).__module__ == "numpy" else ""
        raise ValueError(
            f"{name} must be a torch.Tensor, {CONTRACT}; got {_typename(images)}{hint}"
        )
    _check_shape(images, name)
    _check_dtype(images, name)
    _check_values(images.detach(), name)


def _typename(value: object) -> str:
    return type(value).__name__


def _check_shape(images: torch.Tensor, name: str) -> None:
    shape = tuple(images.shape)
    expected = f"{name} must have shape (B, 3, H, W), got {shape}"
    if images.dim() == 3 and shape[0] in (1, 3, 4):
        raise ValueError(f"{expected}: add the batch axis with images.unsqueeze(0)")
    if images.dim() == 3 and shape[-1] in (3, 4):
        raise ValueError(f"{expected}: one (H, W, C) image? use images.permute(2, 0, 1)[None]")
    if images.dim() != 4:
        raise ValueError(f"{expected} ({images.dim()}-D)")
    channels = shape[1]
    if channels == 1:
        raise ValueError(
            f"{expected}: 1 channel (grey) is not converted; replicate it to RGB with "
            "images.expand(-1, 3, -1, -1)"
        )
    if channels == 4:
        raise ValueError(
            f"{expected}: 4 channels (RGBA?) are not converted; drop alpha with images[:, :3]"
        )
    if channels != 3:
        hint = ": channels-last? use images.permute(0, 3, 1, 2)" if shape[-1] == 3 else ""
        raise ValueError(f"{expected}{hint}")
    if shape[0] == 0:
        raise ValueError(f"{name} is empty: batch size 0 in shape {shape}")
    if shape[2] == 0 or shape[3] == 0:
        raise ValueError(f"{name} is empty: zero height or width in shape {shape}")


def _check_dtype(images: torch.Tensor, name: str) -> None:
    if images.is_floating_point():
        return
    if images.dtype == torch.uint8:
        raise ValueError(
            f"{name} must be a float tensor in [0, 1], got dtype torch.uint8: "
            "divide by 255 first (images.float() / 255)"
        )
    raise ValueError(f"{name} must be a float tensor in [0, 1], got dtype {images.dtype}")


def _check_values(images: torch.Tensor, name: str) -> None:
    finite = torch.isfinite(images)
    if not bool(finite.all()):
        nans = int(torch.isnan(images).sum())
        infs = int((~finite).sum()) - nans
        raise ValueError(f"{name} contains NaN or Inf ({nans} NaN, {infs} Inf values)")
    lo, hi = (float(v) for v in torch.aminmax(images))
    if lo < -RANGE_SLACK or hi > 1 + RANGE_SLACK:
        raise ValueError(  # 8 digits, so an overshoot such as 1.000002 shows
            f"{name} must lie in [0, 1], got values in [{lo:.8g}, {hi:.8g}]{_range_hint(lo, hi)}"
        )


SMALL_OVERSHOOT = 0.01


def _range_hint(lo: float, hi: float) -> str:
    if lo >= -RANGE_SLACK and 2 < hi <= 255 + RANGE_SLACK:
        return " (0..255 pixel values? divide by 255)"
    if lo >= -SMALL_OVERSHOOT and hi <= 1 + SMALL_OVERSHOOT:
        return " (a small overshoot, e.g. from resampling? clip with images.clamp(0, 1))"
    if -1 - RANGE_SLACK <= lo < 0 and hi <= 1 + RANGE_SLACK:
        return " ([-1, 1] values? map them with (images + 1) / 2)"
    return ""
