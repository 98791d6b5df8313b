"""Zhang et al.'s perceptual attack with an SSIM fidelity term.

Zhang, Zhang, Ma, Wang, Wen and Wang, "Perceptual Attacks of No-Reference Image Quality
Models with Human-in-the-Loop", NeurIPS 2022: raise the no-reference score while a
full-reference model (here SSIM) keeps the image close to the original. As in the MSU
benchmark's ``zhang-ssim``, the constraint enters as a penalty and Adam optimises pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from attacks.base import Attack, check_number, set_grads
from attacks.ssim import ssim


class ZhangSSIM(Attack):
    """Adam on pixels maximising ``score / metric_range - ssim_weight * (1 - SSIM(x, x0))``.

    Defaults: learning rate ``alpha = 0.005``, 10 iterations (MSU). ``ssim_weight`` is the
    Lagrange multiplier of the SSIM constraint. Pixels are clipped to [0, 1] after each
    step. No L-inf promise (``bound = None``). Images need H, W >= 11 (the SSIM window).
    """

    name = "zhang-ssim"
    bound = None

    def __init__(
        self,
        metric: Callable,
        *,
        eps: float = 0.0,
        steps: int = 10,
        alpha: float = 0.005,
        ssim_weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(metric, eps=eps, steps=steps, alpha=alpha, **kwargs)
        check_number("ssim_weight", ssim_weight, minimum=0.0)
        self.ssim_weight = float(ssim_weight)

    def extra_hyperparameters(self) -> dict[str, Any]:
        return {"ssim_weight": self.ssim_weight}

    def attack(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if min(images.shape[-2:]) < 11:
            raise ValueError(f"zhang-ssim needs images of at least 11x11, got {images.shape}")
        x = images.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=self.alpha)
        for _ in range(self.steps):
            grad, _ = self.objective_grad(x, generator)
            penalty = self.ssim_weight * (1.0 - ssim(x, images)).sum()
            set_grads([x], [penalty, x], [None, -grad / self.metric_range])
            optimizer.step()
            with torch.no_grad():
                x.clamp_(0.0, 1.0)
        return x.detach()
