"""The defense the competition harness imports: ``Defense(device).apply_defense(images)``.

Identity for now: the diffusion purifier replaces it (see the purification issue).
"""

from __future__ import annotations

import torch

from model import check_images


class Defense:
    """Purify float ``(B, 3, H, W)`` images in [0, 1]; returns the same shape, dtype and device."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)

    def apply_defense(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        return images.clone()
