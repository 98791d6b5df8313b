"""Image files <-> float tensors in [0, 1], without torchvision.

``load_image`` gives ``(3, H, W)`` float32 in [0, 1] (grey is replicated to RGB, alpha is
dropped, palette and CMYK images are converted); ``load_images_uint8`` decodes a training set
once into memory as uint8 (a quarter of float32); ``save_image`` writes a ``(3, H, W)`` tensor
atomically: to a hidden temp file ``.<name>.<random>.part`` beside the target, then renamed,
so a reader never sees a partial image; ``temp_file_target`` recognises the temp files a
killed writer left behind. ``as_uint8`` is the one float-to-8-bit conversion and
``jpeg_round_trip`` the one in-memory JPEG encode/decode (the JPEG defense and the metric's
synthetic distortion).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from common.atomic_write import TEMP_SUFFIX, write_atomic
from common.image_checks import check_images

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# What PIL raises for a file it cannot decode. DecompressionBombError (more than twice
# Image.MAX_IMAGE_PIXELS pixels) derives from Exception only, so it is named explicitly.
DECODE_ERRORS = (
    UnidentifiedImageError,
    Image.DecompressionBombError,
    OSError,
    SyntaxError,
    ValueError,
)


class ImageReadError(ValueError):
    """A file could not be decoded as an image."""


def load_image(path: str | Path) -> torch.Tensor:
    """Read an image file as float32 ``(3, H, W)`` in [0, 1] (RGB; 16-bit greyscale PNG/TIFF kept
    exact, 16-bit colour read at 8 bits, as Pillow decodes it), turned upright by its EXIF
    orientation tag (as viewers show it; outputs carry no tag)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            array = _to_rgb_array(ImageOps.exif_transpose(img))
    except DECODE_ERRORS as err:
        raise ImageReadError(f"cannot read image {path}: {err}") from err
    return torch.from_numpy(rearrange(array, "h w c -> c h w").copy())


def as_uint8(images: torch.Tensor) -> torch.Tensor:
    """Floats in [0, 1] of any shape (an image ``(3, H, W)`` or a batch) -> uint8 of the same
    shape on the same device: clipped, scaled by 255, rounded to nearest (ties to even). Exact
    for what ``load_image`` read from an 8-bit file; the one 8-bit conversion of the project."""
    if images.is_complex() or not images.is_floating_point():
        raise ValueError(f"expected a float tensor in [0, 1], got dtype {images.dtype}")
    return (images.detach().clamp(0, 1) * 255.0).round().to(torch.uint8)


def load_images_uint8(
    paths: list[Path], desc: str = "decoding images", skip_unreadable: bool = False
) -> list[torch.Tensor]:
    """Decode ``paths`` as ``load_image`` does, each kept as uint8 ``(3, H, W)``. A file that
    cannot be read raises ``ImageReadError``, or with ``skip_unreadable`` is logged and left
    out (the list is then shorter than ``paths``)."""
    images = []
    for path in tqdm(paths, desc=desc, mininterval=5, leave=False):
        try:
            images.append(as_uint8(load_image(path)))
        except ImageReadError as err:
            if not skip_unreadable:
                raise
            logger.warning("skipped %s", err)
    return images


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    if img.mode == "F":  # PIL would clip it on a 0..255 scale: [0, 1] data would read black
        raise ValueError("32-bit float pixels (PIL mode F) have no standard range; save 8/16-bit")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        grey = np.asarray(img, dtype=np.float32) / 65535.0
        return np.repeat(grey[..., None], 3, axis=2).clip(0, 1)
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` float in [0, 1] -> ``(H, W, 3)`` uint8 numpy array, as PIL takes it
    (``as_uint8``'s rounding)."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got shape {tuple(image.shape)}")
    return rearrange(as_uint8(image.float().cpu()), "c h w -> h w c").numpy()


def jpeg_round_trip(image: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode a ``(3, H, W)`` float image in [0, 1] as baseline JPEG at ``quality`` (PIL's
    defaults: 4:2:0 chroma) in memory and decode it: float32 ``(3, H, W)`` in [0, 1] on the CPU."""
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be an int in [1, 100], got {quality!r}")
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as jpeg:
        array = np.asarray(jpeg.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(rearrange(array, "h w c -> c h w").copy())


def save_image(image: torch.Tensor, path: str | Path, quality: int = 95) -> None:
    """Write ``(3, H, W)`` float in [0, 1] to ``path`` atomically; format from the suffix.
    ``ValueError`` (before anything is written) for another shape or dtype, non-finite or
    out-of-range values (``image_checks.check_images``) or an unknown extension."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"unknown image extension: {path.suffix!r}")
    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        shape = tuple(image.shape) if hasattr(image, "shape") else type(image).__name__
        raise ValueError(f"image must be a (3, H, W) torch.Tensor, got {shape}")
    check_images(image[None], "image")
    path.parent.mkdir(parents=True, exist_ok=True)
    pil = Image.fromarray(to_uint8(image))
    options = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    write_atomic(path, lambda tmp: pil.save(tmp, format=fmt, **options))


def temp_file_target(path: str | Path) -> Path | None:
    """The file an interrupted ``save_image`` was writing when it left the temp file ``path``
    (``.<name>.<random>.part`` -> ``<name>`` in the same folder); None for any other name."""
    path = Path(path)
    name = path.name
    if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
        return None
    target, _, random_part = name[1 : -len(TEMP_SUFFIX)].rpartition(".")
    # tempfile's random parts are 8 letters, digits and underscores.
    if not target or len(random_part) != 8 or not random_part.replace("_", "").isalnum():
        return None
    return path.with_name(target)


def centre_crop(image: torch.Tensor, size: int | None) -> torch.Tensor:
    """The central ``size x size`` window of ``(..., H, W)``; a side shorter than ``size`` is
    kept whole, and ``size`` None or 0 returns the image unchanged."""
    if size is not None and size < 0:
        raise ValueError(f"crop size must be >= 0, got {size}")
    if not size:
        return image
    height, width = image.shape[-2:]
    top, left = max(0, (height - size) // 2), max(0, (width - size) // 2)
    return image[..., top : top + size, left : left + size]


def random_window(image: torch.Tensor, size: int, generator: torch.Generator) -> tuple[int, int]:
    """Top-left corner ``(top, left)`` of a random ``size x size`` window of ``(..., H, W)``,
    drawn from ``generator`` (two draws: row, then column). ``ValueError`` if it does not fit."""
    height, width = image.shape[-2:]
    if not 1 <= size <= min(height, width):
        raise ValueError(f"a {size} px window does not fit a {height}x{width} image")
    top = int(torch.randint(height - size + 1, (), generator=generator))
    left = int(torch.randint(width - size + 1, (), generator=generator))
    return top, left


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Sorted image files (by extension, case-insensitive) in ``folder``; hidden files and
    anything under a hidden folder (``.ipynb_checkpoints``, ``.thumbs``) are left out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"not a folder: {folder}")
    return sorted(p for p in list_files(folder, recursive) if p.suffix.lower() in IMAGE_EXTENSIONS)


def list_files(folder: Path, recursive: bool = False) -> Iterator[Path]:
    """Files in ``folder`` (and its sub-folders when ``recursive``) that are not hidden and do
    not lie under a hidden folder, in no particular order."""
    pattern = "**/*" if recursive else "*"
    for p in folder.glob(pattern):
        if p.is_file() and not is_hidden(p, folder):
            yield p


def list_folders(folder: str | Path) -> list[Path]:
    """Sorted sub-folders of ``folder`` (one level), hidden ones left out."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_hidden(p, folder))


def is_hidden(path: Path, root: Path) -> bool:
    """Whether ``path`` or a folder between ``root`` and it has a name starting with a dot."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)
