"""Sign-gradient attacks: FGSM, I-FGSM, MI-FGSM and AMI-FGSM, all L-inf bounded by ``eps``.

Defaults follow the MSU Metrics Robustness Benchmark (Antsiferova et al., "Comparing the
robustness of modern no-reference image- and video-quality metrics to adversarial
attacks", AAAI 2024): ``eps = 10/255``, 10 iterations, step ``1/255``, momentum 1.0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from einops import reduce

from attacks.base import Attack, check_int, check_number

EPS = 10 / 255


def _project(x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor | float) -> torch.Tensor:
    """Clip ``x`` to the L-inf ball of radius ``eps`` around ``x0`` and to [0, 1]."""
    return torch.minimum(torch.maximum(x, x0 - eps), x0 + eps).clamp(0.0, 1.0)


class FGSM(Attack):
    """Goodfellow et al., "Explaining and Harnessing Adversarial Examples" (ICLR 2015).

    One step ``x + eps * sign(grad score)``.
    """

    name = "fgsm"

    def __init__(self, metric: Callable, *, eps: float = EPS, **kwargs: Any) -> None:
        if kwargs.pop("steps", 1) != 1:
            raise ValueError("FGSM is a single step: steps must be 1 (use IFGSM for more)")
        check_number("eps", eps, minimum=0.0)
        kwargs.setdefault("alpha", eps if eps > 0 else 1.0)
        super().__init__(metric, eps=eps, steps=1, **kwargs)

    def attack(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        grad, _ = self.objective_grad(images, generator)
        return _project(images + self.eps * grad.sign(), images, self.eps)


class IFGSM(Attack):
    """Kurakin et al., "Adversarial Examples in the Physical World" (ICLR-W 2017).

    ``steps`` sign steps of size ``alpha``, each clipped to the ``eps`` ball and to [0, 1].
    """

    name = "ifgsm"

    def __init__(
        self,
        metric: Callable,
        *,
        eps: float = EPS,
        steps: int = 10,
        alpha: float = 1 / 255,
        **kwargs: Any,
    ) -> None:
        super().__init__(metric, eps=eps, steps=steps, alpha=alpha, **kwargs)

    def attack(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = images.clone()
        for _ in range(self.steps):
            grad, _ = self.objective_grad(x, generator)
            x = _project(x + self.alpha * grad.sign(), images, self.eps)
        return x


class MIFGSM(Attack):
    """Dong et al., "Boosting Adversarial Attacks with Momentum" (CVPR 2018), as MSU runs it.

    ``g_t = grad_t + momentum * g_{t-1}``; step ``alpha * sign(g_t)``, clipped to the ball.
    Like the MSU benchmark's ``mifgsm``, the raw gradient is accumulated (no L1
    normalisation; ``AMIFGSM`` adds it).
    """

    name = "mifgsm"

    def __init__(
        self,
        metric: Callable,
        *,
        eps: float = EPS,
        steps: int = 10,
        alpha: float = 1 / 255,
        momentum: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(metric, eps=eps, steps=steps, alpha=alpha, **kwargs)
        check_number("momentum", momentum, minimum=0.0)
        self.momentum = float(momentum)

    def extra_hyperparameters(self) -> dict[str, Any]:
        return {"momentum": self.momentum}

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        """The gradient as it enters the momentum buffer."""
        return grad

    def attack(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        eps, alpha = self.budget(images)
        x = images.clone()
        velocity = torch.zeros_like(images)
        for _ in range(self.steps):
            grad, _ = self.objective_grad(x, generator)
            velocity = self.direction(grad) + self.momentum * velocity
            x = _project(x + alpha * velocity.sign(), images, eps)
        return x

    def budget(self, images: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """``(eps, alpha)`` for this batch (scalars here, per image in ``AMIFGSM``)."""
        return self.eps, self.alpha


class AMIFGSM(MIFGSM):
    """AMI-FGSM as the MSU benchmark describes it: MI-FGSM with an adapted step and budget.

    The MSU methodology page writes AMI-FGSM as MI-FGSM whose clip radius is adapted per
    image (``Clip_{I, 1/NIQE(I)}``), and its released code (``methods/amifgsm/run.py``)
    ties the step to the budget, ``alpha = eps / steps``. Our reading, documented because
    the sources disagree in detail:

    - step ``alpha_i = eps_i / steps`` (so the walk ends on the ball's surface at most);
    - momentum on the **L1-normalised** gradient, ``g_t = grad / mean|grad| + mu g_{t-1}``
      (Dong et al.'s normalisation, the "auxiliary normalisation" that keeps steps of very
      different gradient magnitude comparable);
    - per-image budget ``eps_i = budget_fn(images)`` when given (e.g. ``1 / NIQE(I)`` as MSU
      does; NIQE needs a pristine-statistics model we cannot ship, so by default every
      image gets the fixed ``eps = 10/255``, as in MSU's released code).
    ``alpha`` is ignored (derived from ``eps``).
    """

    name = "amifgsm"

    def __init__(
        self,
        metric: Callable,
        *,
        eps: float = EPS,
        steps: int = 10,
        momentum: float = 1.0,
        budget_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> None:
        if "alpha" in kwargs:
            raise ValueError("AMIFGSM derives its step from the budget (alpha = eps / steps)")
        check_number("eps", eps, minimum=0.0)
        check_int("steps", steps, minimum=1)
        alpha = eps / steps if eps > 0 else 1.0
        super().__init__(metric, eps=eps, steps=steps, alpha=alpha, momentum=momentum, **kwargs)
        if budget_fn is not None and not callable(budget_fn):
            raise ValueError("budget_fn must be callable images -> (B,) eps, or None")
        self.budget_fn = budget_fn

    def extra_hyperparameters(self) -> dict[str, Any]:
        params = super().extra_hyperparameters()
        if self.budget_fn is not None:
            params["budget_fn"] = getattr(self.budget_fn, "__qualname__", "callable")
        return params

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        scale = reduce(grad.abs(), "b c h w -> b 1 1 1", "mean").clamp_min(1e-12)
        return grad / scale

    def budget(self, images: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        if self.budget_fn is None:
            return self.eps, self.eps / self.steps
        with torch.no_grad():
            eps = torch.as_tensor(self.budget_fn(images), dtype=images.dtype)
        eps = eps.to(images.device).reshape(-1)
        if eps.shape[0] != images.shape[0] or not torch.isfinite(eps).all() or (eps < 0).any():
            raise ValueError(
                f"budget_fn must return {images.shape[0]} finite eps >= 0, got {eps.tolist()}"
            )
        eps = eps.view(-1, 1, 1, 1)
        return eps, eps / self.steps
