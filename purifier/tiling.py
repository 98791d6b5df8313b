"""Process a large image tile by tile and blend the tiles back without seams.

Tiles of at most ``tile x tile`` pixels are spread evenly so that neighbours overlap by at
least ``overlap`` pixels. Each tile is weighted by a window that is 1 inside and falls to ~0
along a raised-cosine (Hann) ramp ``overlap`` pixels wide at every edge it shares with a
neighbour (edges on the image border are not ramped); the output is the weight-normalised sum,
accumulated in float64. The weights are positive everywhere, so an identity ``fn`` gives back
the input exactly, and the blend between two tiles is smooth rather than a step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tqdm import tqdm

TileFn = Callable[[torch.Tensor], torch.Tensor]
WindowFn = Callable[[torch.Tensor, slice, slice], torch.Tensor]
"""``fn(tile, rows, cols)``: also told where the tile sits (``images[..., rows, cols]``)."""


def fits_one_tile(images: torch.Tensor, tile: int) -> bool:
    """Whether ``(..., H, W)`` is no larger than ``tile`` on both sides (processed whole)."""
    return images.shape[-2] <= tile and images.shape[-1] <= tile


def tile_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of the tiles covering ``0..length`` along one axis, evenly spread,
    each ``min(tile, length)`` long, neighbours overlapping by ``>= overlap``."""
    _check_tiling(tile, overlap)
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if length <= tile:
        return [(0, length)]
    count = math.ceil((length - tile) / (tile - overlap)) + 1
    starts = [round(i * (length - tile) / (count - 1)) for i in range(count)]
    return [(start, start + tile) for start in starts]


def edge_window(size: int, overlap: int, ramp_start: bool, ramp_stop: bool) -> torch.Tensor:
    """1-D float64 window of ``size``: 1, with a raised-cosine ramp over the first and/or last
    ``overlap`` samples; strictly positive everywhere."""
    window = torch.ones(size, dtype=torch.float64)
    if overlap == 0:
        return window
    k = torch.arange(overlap, dtype=torch.float64)
    ramp = 0.5 - 0.5 * torch.cos(math.pi * (k + 0.5) / overlap)
    if ramp_start:
        window[:overlap] *= ramp
    if ramp_stop:
        window[size - overlap :] *= ramp.flip(0)
    return window


def tiled_apply(
    images: torch.Tensor,
    fn: TileFn,
    tile: int,
    overlap: int = 32,
    desc: str | None = None,
) -> torch.Tensor:
    """Apply ``fn`` (``(B, C, h, w) -> (B, C, h, w)``) to ``images`` ``(B, C, H, W)`` tile by
    tile (one after another) and blend; same shape, dtype and device as ``images``.

    Images no larger than ``tile`` in both sides go to ``fn`` whole. ``desc`` shows a tqdm
    bar over the tiles.
    """
    return tiled_apply_windows(images, lambda piece, rows, cols: fn(piece), tile, overlap, desc)


def tiled_apply_windows(
    images: torch.Tensor,
    fn: WindowFn,
    tile: int,
    overlap: int = 32,
    desc: str | None = None,
) -> torch.Tensor:
    """``tiled_apply`` for an ``fn(piece, rows, cols)`` that also needs the tile's place, e.g.
    to crop inputs drawn for the whole image; a whole image is ``fn(images, :, :)``."""
    _check_tiling(tile, overlap)
    if images.dim() != 4:
        raise ValueError(f"expected (B, C, H, W), got shape {tuple(images.shape)}")
    if fits_one_tile(images, tile):
        return fn(images, slice(None), slice(None))
    height, width = images.shape[-2:]
    rows = tile_spans(height, tile, overlap)
    cols = tile_spans(width, tile, overlap)
    blended = torch.zeros(images.shape, dtype=torch.float64, device=images.device)
    total_weight = torch.zeros((height, width), dtype=torch.float64, device=images.device)
    spans = [(r, c) for r in rows for c in cols]
    for (top, bottom), (left, right) in tqdm(spans, desc=desc, disable=desc is None, leave=False):
        piece = images[..., top:bottom, left:right]
        out = fn(piece, slice(top, bottom), slice(left, right))
        if out.shape != piece.shape:
            raise ValueError(
                f"fn changed the tile shape {tuple(piece.shape)} -> {tuple(out.shape)}"
            )
        row_window = edge_window(bottom - top, overlap, top > 0, bottom < height)
        col_window = edge_window(right - left, overlap, left > 0, right < width)
        weight = torch.outer(row_window, col_window).to(images.device)
        blended[..., top:bottom, left:right] += out.to(torch.float64) * weight
        total_weight[top:bottom, left:right] += weight
    return (blended / total_weight).to(images.dtype)


def _check_tiling(tile: int, overlap: int) -> None:
    if not isinstance(tile, int) or isinstance(tile, bool) or tile < 1:
        raise ValueError(f"tile must be a positive integer, got {tile!r}")
    if not isinstance(overlap, int) or isinstance(overlap, bool) or overlap < 0:
        raise ValueError(f"overlap must be an integer >= 0, got {overlap!r}")
    if 2 * overlap >= tile:
        raise ValueError(f"overlap must be less than half the tile: tile={tile}, overlap={overlap}")
