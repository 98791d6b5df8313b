"""Adversarial Color Filter: a global per-channel tone curve optimised to raise the score.

Zhao, Liu and Larson, "Adversarial Color Filter: Towards Unrestricted Adversarial Examples"
(AdvCF), 2020/2023. The filter is a monotone piecewise-linear curve per RGB channel with
``pieces`` equal-width segments; it changes colours globally, not pixels locally, so it has
no L-inf bound.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from einops import rearrange, reduce

from attacks.base import Attack, check_int, check_number, set_grads


def apply_color_curves(images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per-channel piecewise-linear curves: ``(B, 3, H, W)`` in [0, 1], ``(B, 3, K)`` -> images.

    Segment ``k`` of channel ``c`` covers ``[k/K, (k+1)/K]`` and has slope
    ``K * softmax(logits[b, c])[k]``: the curve is monotone, maps 0 to 0 and 1 to 1, and
    all-equal logits give the identity.
    """
    b, c, h, w = images.shape
    if logits.dim() != 3 or logits.shape[:2] != (b, c):
        raise ValueError(f"logits must be ({b}, {c}, K), got {tuple(logits.shape)}")
    pieces = logits.shape[-1]
    rise = logits.softmax(dim=-1)  # height each segment adds; sums to 1
    knots = torch.cat((rise.new_zeros(b, c, 1), rise.cumsum(dim=-1)), dim=-1)  # (B, C, K+1)
    t = rearrange(images, "b c h w -> b c (h w)") * pieces
    index = t.floor().clamp(0, pieces - 1)
    frac = t - index
    index = index.long()
    out = knots.gather(-1, index) + frac * rise.gather(-1, index)
    return rearrange(out, "b c (h w) -> b c h w", h=h, w=w)


def curve_deviation(logits: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of the curves from the identity at their knots: ``(B,)``."""
    pieces = logits.shape[-1]
    rise = logits.softmax(dim=-1)
    knots = rise.cumsum(dim=-1)
    identity = torch.arange(1, pieces + 1, dtype=logits.dtype, device=logits.device) / pieces
    return reduce((knots - identity).square(), "b c k -> b", "mean")


class AdvCF(Attack):
    """Adam on the curves' segment logits maximising ``score / metric_range - reg * dev``.

    ``dev`` is ``curve_deviation`` (mean squared departure of the tone curves from the
    identity), AdvCF's regulariser on the filter strength. Defaults: 64 segments as AdvCF,
    10 Adam steps with learning rate ``alpha = 0.05`` on the logits, ``reg_weight = 10``.
    """

    name = "adv-cf"
    bound = None

    def __init__(
        self,
        metric: Callable,
        *,
        eps: float = 0.0,
        steps: int = 10,
        alpha: float = 0.05,
        pieces: int = 64,
        reg_weight: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(metric, eps=eps, steps=steps, alpha=alpha, **kwargs)
        check_int("pieces", pieces, minimum=1)
        check_number("reg_weight", reg_weight, minimum=0.0)
        self.pieces = pieces
        self.reg_weight = float(reg_weight)

    def extra_hyperparameters(self) -> dict[str, Any]:
        return {"pieces": self.pieces, "reg_weight": self.reg_weight}

    def attack(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, c = images.shape[:2]
        logits = images.new_zeros(b, c, self.pieces, requires_grad=True)
        optimizer = torch.optim.Adam([logits], lr=self.alpha)
        for _ in range(self.steps):
            x = apply_color_curves(images, logits)
            grad, _ = self.objective_grad(x, generator)
            penalty = self.reg_weight * curve_deviation(logits).sum()
            set_grads([logits], [penalty, x], [None, -grad / self.metric_range])
            optimizer.step()
        return apply_color_curves(images, logits.detach())
