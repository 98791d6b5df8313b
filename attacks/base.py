"""The attack base class: a differentiable metric in, images that raise its score out.

An ``Attack`` wraps a metric (``(B, 3, H, W)`` float in [0, 1] -> ``(B, 1)`` score, higher is
better) and is called on images in [0, 1]; it returns images in [0, 1] of the same shape,
dtype and device. The design follows torchattacks: hyper-parameters are fixed at
construction, ``__repr__`` shows them, the metric's train/eval mode is restored afterwards.

The objective an attack climbs is ``metric(defense(transform(x)))``: ``transform`` is an
optional random EOT transform (Athalye et al., "Synthesizing Robust Adversarial Examples",
ICML 2018) and ``defense`` an optional purifier in the loop, for adaptive attacks. Gradients
are averaged over ``eot_samples`` draws, which also averages over a stochastic defense.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from common.image_checks import check_images

EOTTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
"""``(x, generator) -> x'``: a random, differentiable transform of ``(B, 3, H, W)`` images."""

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(view, score) -> (B,)`` value to maximise; ``view`` is what the metric saw."""


class Attack:
    """Base class: subclasses implement ``attack(images, generator) -> images``.

    Args:
        metric: callable ``(B, 3, H, W)`` in [0, 1] -> ``(B, 1)`` score, higher is better.
        eps: perturbation budget; what it bounds is named by the class attribute ``bound``.
        steps: number of iterations.
        alpha: step size (sign methods) or learning rate (Adam-based methods).
        eot_samples: draws of ``eot_transform`` / the defense averaged per gradient.
        eot_transform: ``(x, generator) -> x`` random differentiable transform, or None.
        defense: ``(B, 3, H, W) -> (B, 3, H, W)`` differentiable purifier, or None. If its
            signature has a ``generator`` parameter, the attack's generator is passed on.
        metric_range: score range used to normalise the score in Adam-based objectives
            (the MSU benchmark's ``1 - score / metric_range`` loss).
    """

    name: ClassVar[str] = "attack"
    bound: ClassVar[str | None] = "linf"
    """What ``eps`` bounds: ``"linf"`` (max |x' - x|), ``"rmse"`` (per-image RMSE) or None."""

    def __init__(
        self,
        metric: Callable[[torch.Tensor], torch.Tensor],
        *,
        eps: float,
        steps: int,
        alpha: float,
        eot_samples: int = 1,
        eot_transform: EOTTransform | None = None,
        defense: Callable[..., torch.Tensor] | None = None,
        metric_range: float = 100.0,
    ) -> None:
        if not callable(metric):
            raise ValueError(f"metric must be callable, got {type(metric).__name__}")
        check_number("eps", eps, minimum=0.0)
        if self.bound is None and eps != 0:
            raise ValueError(f"{self.name} has no eps bound (bound=None): leave eps at 0")
        check_number("alpha", alpha, minimum=0.0, strict=True)
        check_number("metric_range", metric_range, minimum=0.0, strict=True)
        check_int("steps", steps, minimum=1)
        check_int("eot_samples", eot_samples, minimum=1)
        if eot_transform is not None and not callable(eot_transform):
            raise ValueError("eot_transform must be callable (x, generator) -> x, or None")
        if defense is not None and not callable(defense):
            raise ValueError("defense must be callable images -> images, or None")
        self.metric = metric
        self.eps = float(eps)
        self.steps = int(steps)
        self.alpha = float(alpha)
        self.eot_samples = int(eot_samples)
        self.eot_transform = eot_transform
        self.defense = defense
        self.metric_range = float(metric_range)
        self._defense_takes_generator = accepts_generator(defense)

    # ----------------------------------------------------------------- public API
    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Attack float ``(B, 3, H, W)`` images in [0, 1]; returns the same shape/dtype/device."""
        check_images(images)
        if torch.is_inference_mode_enabled():
            raise ValueError(
                "attacks need autograd: call them outside torch.inference_mode() "
                "(torch.no_grad() is fine)"
            )
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator)}")
        if generator is None:
            generator = torch.Generator(device=images.device)
            generator.seed()
        modes = _module_modes(self.metric) + _module_modes(self.defense)
        for module, _ in modes:
            module.eval()
        try:
            with torch.enable_grad():
                adv = self.attack(images.detach(), generator)
        finally:
            for module, training in modes:
                module.train(training)
        return adv.detach().clamp(0.0, 1.0).to(dtype=images.dtype, device=images.device)

    def attack(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The attack proper; ``images`` are detached and validated."""
        raise NotImplementedError

    def hyperparameters(self) -> dict[str, Any]:
        """Hyper-parameters shown by ``repr``; subclasses extend ``extra_hyperparameters``."""
        params: dict[str, Any] = {"steps": self.steps, "alpha": self.alpha}
        if self.bound is not None:  # eps means nothing to unbounded attacks
            params = {"eps": self.eps, **params}
        params.update(self.extra_hyperparameters())
        params["eot_samples"] = self.eot_samples
        if self.eot_transform is not None:
            params["eot_transform"] = _short_name(self.eot_transform)
        if self.defense is not None:
            params["defense"] = _short_name(self.defense)
        return params

    def extra_hyperparameters(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={_format(v)}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({parts})"

    # ------------------------------------------------------------ objective helpers
    def view(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """What the metric sees: ``defense(eot_transform(x))`` (one random draw)."""
        if self.eot_transform is not None:
            x = self.eot_transform(x, generator)
        if self.defense is not None:
            x = (
                self.defense(x, generator=generator)
                if self._defense_takes_generator
                else (self.defense(x))
            )
        return x

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Metric score of ``(B, 3, H, W)`` images as a ``(B,)`` tensor."""
        out = self.metric(x)
        if not isinstance(out, torch.Tensor) or out.shape not in ((x.shape[0], 1), x.shape[:1]):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"metric must return a (B, 1) score tensor, got {shape}")
        return out.reshape(x.shape[0])

    def objective_grad(
        self,
        x: torch.Tensor,
        generator: torch.Generator,
        objective: Objective | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """EOT gradient of the objective at ``x``: ``(grad (B, 3, H, W), value (B,))``.

        The objective defaults to the metric score of the view; ``objective(view, score)``
        may add terms (it must return ``(B,)``). Both outputs are means over
        ``eot_samples`` draws. Images in a batch are scored independently, so the
        gradient of the summed objective is each image's own gradient.
        """
        x = x.detach().requires_grad_(True)
        grad = torch.zeros_like(x)
        value = x.new_zeros(x.shape[0])
        for _ in range(self.eot_samples):
            view = self.view(x, generator)
            score = self.score(view)
            obj = score if objective is None else objective(view, score)
            (g,) = torch.autograd.grad(obj.sum(), x)
            grad += g
            value += obj.detach()
        return grad / self.eot_samples, value / self.eot_samples


def set_grads(params: list[torch.Tensor], outputs: list[torch.Tensor], grads: list) -> None:
    """Backpropagate ``outputs`` (with ``grads``) into ``params[i].grad`` only.

    Unlike ``backward()`` this never accumulates into the metric's parameters.
    """
    got = torch.autograd.grad(outputs, params, grads, allow_unused=True)
    for p, g in zip(params, got, strict=True):
        p.grad = torch.zeros_like(p) if g is None else g


def _module_modes(obj: object) -> list[tuple[nn.Module, bool]]:
    candidates = [obj, getattr(obj, "__self__", None)]  # bound methods: their module
    for candidate in candidates:
        if isinstance(candidate, nn.Module):
            return [(m, m.training) for m in candidate.modules()]
    return []


def accepts_generator(fn: object) -> bool:
    """Whether ``fn`` (a function or an ``nn.Module``'s forward) takes ``generator=``."""
    if fn is None:
        return False
    if isinstance(fn, nn.Module):  # Module.__call__ hides forward's signature
        fn = fn.forward
    try:
        return "generator" in inspect.signature(fn).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def check_number(name: str, value: object, minimum: float, strict: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        op = ">" if strict else ">="
        raise ValueError(f"{name} must be finite and {op} {minimum}, got {value!r}")


def check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _short_name(obj: object) -> str:
    return getattr(obj, "__qualname__", None) or type(obj).__name__


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
