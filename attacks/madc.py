"""MAD competition: raise the score while holding the MSE to the original fixed.

Wang and Simoncelli, "Maximum differentiation (MAD) competition: a methodology for
comparing computational models of perceptual quantities", Journal of Vision 2008.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from einops import reduce

from attacks.base import Attack

EPS = 10 / 255


def rms(x: torch.Tensor) -> torch.Tensor:
    """Per-image root mean square of ``(B, C, H, W)`` as ``(B, 1, 1, 1)``."""
    return reduce(x.square(), "b c h w -> b 1 1 1", "mean").sqrt()


class MADC(Attack):
    """Signed gradient ascent on the metric along the MSE iso-surface, RMSE held <= ``eps``.

    As the MSU benchmark runs MAD competition: the first step follows the sign of the metric
    gradient; each later step follows the sign of the gradient's projection onto the tangent
    plane of the iso-MSE surface (its component along the normal ``x - x0`` removed), so the
    score rises while the MSE to the original stays put. After each step the perturbation
    is scaled back onto the ball ``RMSE(x, x0) <= eps`` and clipped to [0, 1] (clipping only
    shrinks ``|x - x0|``), so ``RMSE <= eps`` always holds (``bound = "rmse"``) and no pixel
    moves by more than ``steps * alpha``.

    Defaults: RMSE level ``10/255``, 8 iterations as MSU; step ``alpha = 1/255`` per pixel
    (MSU's code takes 0.001, about a quarter of that, which barely moves the score).
    """

    name = "madc"
    bound = "rmse"

    def __init__(
        self,
        metric: Callable,
        *,
        eps: float = EPS,
        steps: int = 8,
        alpha: float = 1 / 255,
        **kwargs: Any,
    ) -> None:
        super().__init__(metric, eps=eps, steps=steps, alpha=alpha, **kwargs)

    def reproject(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Scale ``x - x0`` down to RMS ``eps`` where it is larger, then clip to [0, 1]."""
        delta = x - x0
        shrink = (self.eps / rms(delta).clamp_min(1e-12)).clamp(max=1.0)
        return (x0 + delta * shrink).clamp(0.0, 1.0)

    def attack(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.eps == 0:
            return images.clone()
        x = images.clone()
        for i in range(self.steps):
            grad, _ = self.objective_grad(x, generator)
            if i > 0:
                normal = x - images
                coef = reduce(grad * normal, "b c h w -> b 1 1 1", "sum") / reduce(
                    normal.square(), "b c h w -> b 1 1 1", "sum"
                ).clamp_min(1e-20)
                grad = grad - coef * normal
            x = self.reproject(x + self.alpha * grad.sign(), images)
        return x
