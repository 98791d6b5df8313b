"""Image files <-> float tensors in [0, 1], without torchvision.

``load_image`` gives ``(3, H, W)`` float32 in [0, 1] (grey and RGBA are converted to RGB);
``save_image`` writes a ``(3, H, W)`` tensor atomically (temp file + rename), lossless for PNG.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class ImageReadError(ValueError):
    """A file could not be decoded as an image."""


def load_image(path: str | Path) -> torch.Tensor:
    """Read an image file as float32 ``(3, H, W)`` in [0, 1] (RGB; 16-bit PNG/TIFF kept exact)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            array = _to_rgb_array(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"cannot read image {path}: {err}") from err
    return torch.from_numpy(rearrange(array, "h w c -> c h w").copy())


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        grey = np.asarray(img, dtype=np.float32) / 65535.0
        return np.repeat(grey[..., None], 3, axis=2).clip(0, 1)
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` float in [0, 1] -> ``(H, W, 3)`` uint8 (rounded, clipped)."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got shape {tuple(image.shape)}")
    array = rearrange(image.detach().float().cpu().clamp(0, 1), "c h w -> h w c").numpy()
    return (array * 255.0 + 0.5).astype(np.uint8)


def save_image(image: torch.Tensor, path: str | Path, quality: int = 95) -> None:
    """Write ``(3, H, W)`` float in [0, 1] to ``path`` atomically; format from the suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pil = Image.fromarray(to_uint8(image))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        fmt = Image.registered_extensions().get(path.suffix.lower())
        if fmt is None:
            raise ValueError(f"unknown image extension: {path.suffix!r}")
        options = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
        pil.save(tmp, format=fmt, **options)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Sorted image files (by extension, case-insensitive) in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"not a folder: {folder}")
    return sorted(_walk(folder, recursive))


def _walk(folder: Path, recursive: bool) -> Iterator[Path]:
    pattern = "**/*" if recursive else "*"
    for p in folder.glob(pattern):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."):
            yield p
