"""Classical input-transformation defenses: identity, resize, JPEG, Gaussian blur, median.

Each takes float ``(B, 3, H, W)`` images in [0, 1] and returns dtype and device unchanged, in
[0, 1]. All but ``ResizeDefense`` keep the shape: it returns the smaller image, as the
competition's baseline does (the harness scores it as returned and resizes it back only for
PSNR/SSIM). Resize, blur and median are differentiable (no ``no_grad`` inside), so adaptive
attacks can back-propagate through them; JPEG goes through PIL and is not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from common.devices import resolve_device
from common.image_checks import check_images
from common.image_io import jpeg_round_trip


class ClassicalDefense:
    """Base class: validate the input, run ``purify``, keep dtype and device, clip to [0, 1]."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = resolve_device(device)

    def apply_defense(self, images: torch.Tensor) -> torch.Tensor:
        """Purify float ``(B, 3, H, W)`` images in [0, 1]; same dtype and device, in [0, 1]
        (same shape except for ``ResizeDefense``)."""
        check_images(images)
        return self.purify(images).clamp(0.0, 1.0).to(images.dtype)

    def purify(self, images: torch.Tensor) -> torch.Tensor:
        """The transform itself, on already validated images."""
        raise NotImplementedError

    def hyperparameters(self) -> dict[str, object]:
        """Hyper-parameters shown by ``repr``."""
        return {}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({params})"


class IdentityDefense(ClassicalDefense):
    """No defense: returns an exact copy of the input."""

    def apply_defense(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        return images.clone()


def _check_scale(scale: object) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale <= 1:
        raise ValueError(f"scale must be a number in (0, 1], got {scale!r}")
    return float(scale)


def _antialiased_resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of ``(B, 3, H, W)`` to ``size`` (torchvision's
    ``transforms.Resize`` on tensors, without torchvision)."""
    if images.dtype not in (torch.float32, torch.float64):
        images = images.float()  # antialiased interpolation has no half kernels on the CPU
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """``(int(scale * height), int(scale * width))``, each at least 1: the organisers'
    ``int(0.5 * H), int(0.5 * W)`` for ``scale`` 0.5."""
    return max(1, int(scale * height)), max(1, int(scale * width))


class ResizeDefense(ClassicalDefense):
    """The competition's baseline: resize to ``int(scale * H) x int(scale * W)`` (bilinear,
    antialiased) and return that smaller image, as the organisers' ``MetricModel.defense``
    does. A 65x97 input comes back 32x48."""

    def __init__(self, device: str | torch.device = "cpu", scale: float = 0.5) -> None:
        super().__init__(device)
        self.scale = _check_scale(scale)

    def hyperparameters(self) -> dict[str, object]:
        return {"scale": self.scale}

    def purify(self, images: torch.Tensor) -> torch.Tensor:
        return _antialiased_resize(images, scaled_size(*images.shape[-2:], self.scale))


class DownUpResizeDefense(ResizeDefense):
    """Resize by ``scale`` and back up to the input size (bilinear, antialiased): a blur that
    keeps the shape. Not the competition's baseline (that is ``ResizeDefense``)."""

    def purify(self, images: torch.Tensor) -> torch.Tensor:
        return _antialiased_resize(super().purify(images), tuple(images.shape[-2:]))


class JpegDefense(ClassicalDefense):
    """JPEG round-trip through PIL at ``quality`` (4:2:0 chroma subsampling), image by image.

    Pixels are rounded to 8 bits first. Not differentiable: the output carries no gradient.
    """

    def __init__(self, device: str | torch.device = "cpu", quality: int = 50) -> None:
        super().__init__(device)
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            raise ValueError(f"JPEG quality must be an int in [1, 100], got {quality!r}")
        self.quality = quality

    def hyperparameters(self) -> dict[str, object]:
        return {"quality": self.quality}

    def purify(self, images: torch.Tensor) -> torch.Tensor:
        decoded = [jpeg_round_trip(image, self.quality) for image in images]
        return torch.stack(decoded).to(device=images.device, dtype=images.dtype)


def _check_min_size(images: torch.Tensor, name: str) -> None:
    if min(images.shape[-2:]) < 2:
        raise ValueError(
            f"{name} uses reflect padding and needs images at least 2x2, "
            f"got {tuple(images.shape[-2:])}"
        )


def gaussian_kernel_1d(sigma: float, size: int = 3) -> torch.Tensor:
    """Normalised 1-D Gaussian taps ``exp(-x^2 / (2 sigma^2))`` for ``x`` centred on 0, float64."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    taps = torch.exp(-(x**2) / (2 * sigma**2))
    return taps / taps.sum()


class GaussianBlurDefense(ClassicalDefense):
    """3x3 Gaussian blur (separable, per channel) with reflect padding."""

    def __init__(self, device: str | torch.device = "cpu", sigma: float = 0.8) -> None:
        super().__init__(device)
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.sigma = sigma
        self.taps = gaussian_kernel_1d(sigma, 3)

    def hyperparameters(self) -> dict[str, object]:
        return {"sigma": self.sigma, "size": 3}

    def purify(self, images: torch.Tensor) -> torch.Tensor:
        _check_min_size(images, "blur")
        taps = self.taps.to(device=images.device, dtype=images.dtype)
        channels = images.shape[1]
        rows = rearrange(taps, "k -> 1 1 1 k").expand(channels, 1, 1, 3)
        cols = rearrange(taps, "k -> 1 1 k 1").expand(channels, 1, 3, 1)
        padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
        blurred = F.conv2d(padded, rows, groups=channels)
        return F.conv2d(blurred, cols, groups=channels)


class MedianDefense(ClassicalDefense):
    """3x3 median filter per channel with reflect padding (gradient flows to the median pixel)."""

    def hyperparameters(self) -> dict[str, object]:
        return {"size": 3}

    def purify(self, images: torch.Tensor) -> torch.Tensor:
        _check_min_size(images, "median")
        height, width = images.shape[-2:]
        padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
        patches = F.unfold(padded, kernel_size=3)
        patches = rearrange(
            patches, "b (c k) (h w) -> b c h w k", c=images.shape[1], k=9, h=height, w=width
        )
        return patches.median(dim=-1).values
