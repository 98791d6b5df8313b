"""Tiny stand-ins shared by the benchmark and tuner tests: a toy metric, a toy Linearity
for timing and a 2-attack x 2-image dataset of 32 px PNGs in the competition layout."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from common.image_checks import check_images
from common.image_io import save_image
from metrics.linearity import IQAModel, TrunkSpec

ATTACKS = ("attack_a", "attack_b")
NAMES = ("img0.png", "img1.png")
TINY_SPEC = TrunkSpec((1, 1, 1, 1), groups=8, width_per_group=4, stem_width=32)


class ToyMetric(nn.Module):
    """A tiny smooth conv net: ``(B, 3, H, W)`` in [0, 1] -> ``(B, 1)`` scores around 50."""

    name = "toy"

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        return 50 + 20 * torch.tanh(self.conv(x)).mean(dim=(1, 2, 3)).unsqueeze(1)


def tiny_linearity() -> IQAModel:
    """A small random ``IQAModel`` standing in for ResNeXt-101 in timing."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return IQAModel(TINY_SPEC).eval()


def write_tiny_dataset(root: Path, size: int = 32) -> Path:
    """``root/reference/<name>`` and ``root/attacked/<attack>/<name>`` (reference + noise)."""
    gen = torch.Generator().manual_seed(0)
    for i, name in enumerate(NAMES):
        reference = (torch.rand(3, size, size, generator=gen) * 0.6 + 0.2 * i).clamp(0, 1)
        save_image(reference, root / "reference" / name)
        for attack in ATTACKS:
            noise = 0.06 * torch.randn(3, size, size, generator=gen)
            save_image((reference + noise).clamp(0, 1), root / "attacked" / attack / name)
    return root
