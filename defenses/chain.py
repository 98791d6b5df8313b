"""Defenses applied one after another, e.g. a JPEG round-trip in front of the purifier."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from defenses.registry import PurifyingDefense


class ChainedDefense:
    """``apply_defense`` of each part in turn, each on the previous part's output: float
    ``(B, 3, H, W)`` in [0, 1] -> the last part's output (same shape, dtype and device when
    every part keeps them). Gradients pass through the parts that carry them."""

    def __init__(self, parts: Sequence[PurifyingDefense]) -> None:
        if len(parts) < 2:
            raise ValueError(f"a chain needs at least two defenses, got {len(parts)}")
        self.parts = tuple(parts)

    def apply_defense(self, images: torch.Tensor) -> torch.Tensor:
        for part in self.parts:
            images = part.apply_defense(images)
        return images

    def __repr__(self) -> str:
        return f"ChainedDefense({' -> '.join(repr(part) for part in self.parts)})"
