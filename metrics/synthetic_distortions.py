"""Synthetic distortions at graded levels, for RankIQA-style ranking constraints.

Liu, van de Weijer and Bagdanov, "RankIQA: Learning from Rankings for No-Reference Image
Quality Assessment", ICCV 2017: a distorted copy of an image is worse than the image, and a
stronger distortion of the same kind is worse still. ``distort(image, kind, level, generator)``
takes a float ``(3, H, W)`` image in [0, 1] and returns one of the same shape and range;
``level`` runs from 0 (mild) to ``N_LEVELS - 1`` (severe).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from common.image_io import jpeg_round_trip

N_LEVELS = 5
BLUR_SIGMA = (0.7, 1.1, 1.6, 2.4, 3.5)
NOISE_SIGMA = (0.015, 0.03, 0.05, 0.08, 0.12)
JPEG_QUALITY = (35, 22, 14, 9, 5)
MOTION_LENGTH = (3, 5, 8, 12, 17)
RESAMPLE_FACTOR = (1.6, 2.2, 3.0, 4.0, 5.5)
CONTRAST_KEEP = (0.75, 0.6, 0.47, 0.36, 0.27)

ANY_SOURCE_KINDS = ("blur", "noise", "jpeg", "motion", "resample")
"""Kinds that make any photo worse, including ones that are already distorted."""
CLEAN_SOURCE_KINDS = (*ANY_SOURCE_KINDS, "contrast")
"""Kinds that make a well-exposed clean photo worse."""


def _check(image: torch.Tensor, level: int) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a (3, H, W) tensor, got {shape}")
    if not 0 <= level < N_LEVELS:
        raise ValueError(f"level must be in [0, {N_LEVELS - 1}], got {level}")


def _depthwise(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve each channel of ``(3, H, W)`` with a 2-D ``kernel`` (reflect padding)."""
    kh, kw = kernel.shape
    x = F.pad(image[None], (kw // 2, kw // 2, kh // 2, kh // 2), mode="reflect")
    weight = kernel.to(image)[None, None].expand(3, 1, kh, kw)
    return F.conv2d(x, weight, groups=3)[0]


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of a ``(3, H, W)`` image with standard deviation ``sigma`` pixels."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    return _depthwise(image, torch.outer(g, g))


def motion_blur(image: torch.Tensor, length: int, angle: float) -> torch.Tensor:
    """Linear motion blur: average along a ``length``-pixel segment at ``angle`` radians."""
    size = length if length % 2 else length + 1
    kernel = torch.zeros(size, size)
    c = size // 2
    for s in torch.linspace(-(length - 1) / 2, (length - 1) / 2, 4 * length):
        x = round(c + float(s) * math.cos(angle))
        y = round(c + float(s) * math.sin(angle))
        kernel[y, x] = 1.0
    return _depthwise(image, kernel / kernel.sum())


def jpeg_compress(image: torch.Tensor, quality: int) -> torch.Tensor:
    """Round-trip a ``(3, H, W)`` image through baseline JPEG at ``quality`` (PIL, 4:2:0);
    same dtype out."""
    return jpeg_round_trip(image, int(quality)).to(image.dtype)


def resample(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Downscale by ``factor`` (antialiased) and upscale back (bilinear): loss of detail."""
    h, w = image.shape[-2:]
    small = (max(1, round(h / factor)), max(1, round(w / factor)))
    x = F.interpolate(image[None], size=small, mode="bilinear", antialias=True)
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)[0]


def reduce_contrast(image: torch.Tensor, keep: float) -> torch.Tensor:
    """Blend towards the image's mean grey, keeping ``keep`` of the contrast."""
    return image.mean() + keep * (image - image.mean())


def distort(
    image: torch.Tensor, kind: str, level: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Distort a float ``(3, H, W)`` image in [0, 1] by ``kind`` at ``level``; same shape, [0, 1].

    ``generator`` drives the random parts (noise values, motion direction).
    """
    _check(image, level)
    if kind == "blur":
        out = gaussian_blur(image, BLUR_SIGMA[level])
    elif kind == "noise":
        noise = torch.randn(image.shape, generator=generator, dtype=image.dtype)
        out = image + NOISE_SIGMA[level] * noise
    elif kind == "jpeg":
        out = jpeg_compress(image, JPEG_QUALITY[level])
    elif kind == "motion":
        angle = float(torch.rand((), generator=generator)) * math.pi
        out = motion_blur(image, MOTION_LENGTH[level], angle)
    elif kind == "resample":
        out = resample(image, RESAMPLE_FACTOR[level])
    elif kind == "contrast":
        out = reduce_contrast(image, CONTRAST_KEEP[level])
    else:
        raise ValueError(f"unknown distortion {kind!r}; choose from {CLEAN_SOURCE_KINDS}")
    return out.clamp(0.0, 1.0)
