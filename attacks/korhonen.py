"""Korhonen and You's attack: a perturbation masked by the image's spatial activity.

Korhonen and You, "Adversarial Attacks against Blind Image Quality Assessment Models",
ACM QoEVMA 2022. The perturbation is concentrated in textured regions, where it is least
visible: a Sobel activity map of the luma, normalised to [0, 1] and dilated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, reduce

from attacks.base import Attack, set_grads

LUMA_BT601 = (0.299, 0.587, 0.114)
# 5x5 disk footprint of the dilation (the 5x5 square without its corners).
DILATION_FOOTPRINT = torch.tensor(
    [
        [0, 1, 1, 1, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [0, 1, 1, 1, 0],
    ],
    dtype=torch.bool,
)


def spatial_activity_map(images: torch.Tensor) -> torch.Tensor:
    """Sobel activity of the luma: ``(B, 3, H, W)`` in [0, 1] -> ``(B, 1, H, W)`` in [0, 1].

    Gradient magnitude of BT.601 luma with the 3x3 Sobel pair, the 1-pixel border set to
    zero, divided by its per-image maximum (a flat image gives all ones), then grey-dilated
    with a 5x5 disk so the mask also covers the edges' immediate surroundings.
    """
    weights = images.new_tensor(LUMA_BT601).view(1, 3, 1, 1)
    luma = (images * weights).sum(dim=1, keepdim=True)
    sobel_x = images.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack((sobel_x, sobel_x.T)).unsqueeze(1)  # (2, 1, 3, 3)
    grad = F.conv2d(luma, kernels)  # valid: (B, 2, H-2, W-2)
    magnitude = F.pad(grad.square().sum(dim=1, keepdim=True).sqrt(), (1, 1, 1, 1))
    peak = reduce(magnitude, "b 1 h w -> b 1 1 1", "max")
    flat = peak <= 0
    activity = torch.where(flat, torch.ones_like(magnitude), magnitude / peak.clamp_min(1e-12))
    return _dilate(activity)


def _dilate(mask: torch.Tensor) -> torch.Tensor:
    """Grey dilation of ``(B, 1, H, W)`` by ``DILATION_FOOTPRINT`` (zero padding)."""
    h, w = mask.shape[-2:]
    patches = F.unfold(mask, kernel_size=5, padding=2)  # (B, 25, H*W)
    footprint = DILATION_FOOTPRINT.to(mask.device).flatten()
    dilated = patches[:, footprint].amax(dim=1)
    return rearrange(dilated, "b (h w) -> b 1 h w", h=h, w=w)


class Korhonen(Attack):
    """``x = clip(x0 + m * delta)`` with ``m`` the spatial activity map; Adam on ``delta``.

    Adam (learning rate ``alpha = 0.005``, 10 iterations, as the MSU benchmark) maximises
    the score. The MSU code masks the *gradient* instead; with Adam's per-coordinate
    normalisation that makes the mask almost binary, so we mask the perturbation itself,
    which is what the paper describes (smooth areas change little, textured ones more).
    No L-inf promise (``bound = None``); in practice ``|x - x0| <= steps * alpha``.
    """

    name = "korhonen"
    bound = None

    def __init__(
        self,
        metric: Callable,
        *,
        eps: float = 0.0,
        steps: int = 10,
        alpha: float = 0.005,
        **kwargs: Any,
    ) -> None:
        super().__init__(metric, eps=eps, steps=steps, alpha=alpha, **kwargs)

    def attack(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        mask = spatial_activity_map(images)
        delta = torch.zeros_like(images, requires_grad=True)
        optimizer = torch.optim.Adam([delta], lr=self.alpha)
        for _ in range(self.steps):
            x = (images + mask * delta).clamp(0.0, 1.0)
            grad, _ = self.objective_grad(x, generator)
            set_grads([delta], [x], [-grad / self.metric_range])
            optimizer.step()
        return (images + mask * delta.detach()).clamp(0.0, 1.0)
