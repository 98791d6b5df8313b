"""Adaptive attacks on the whole pipeline ``metric(defense(x))``.

Two ways to put a stochastic purifier in an attack's loop (``Attack(..., defense=...)``):

- **full gradients**: the purifier itself, differentiated through every reverse step
  (``DiffusionPurifier`` leaves autograd on); with ``eot_samples > 1`` the gradient is
  averaged over fresh noise draws (EOT, Athalye et al., "Synthesizing Robust Adversarial
  Examples", ICML 2018);
- **BPDA**: the purifier runs forward, its backward pass is replaced by the identity
  ("Backward Pass Differentiable Approximation", Athalye, Carlini and Wagner, "Obfuscated
  Gradients Give a False Sense of Security", ICML 2018). Cheaper (no graph through the
  denoiser) and immune to vanishing or noisy gradients inside the chain.

Each in-loop defense is a callable ``(x, generator=None) -> x`` on float ``(B, 3, H, W)``
images in [0, 1], so the attack's generator drives every noise draw.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from attacks.base import Attack, accepts_generator
from attacks.registry import make_attack

ADAPTIVE_MODES = ("full", "bpda")
"""``full``: gradients through the reverse steps; ``bpda``: identity backward."""

DefenseFn = Callable[..., torch.Tensor]


def call_defense(
    defense: DefenseFn, images: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """``defense(images, generator=generator)`` if it takes a generator, else
    ``defense(images)``."""
    if generator is not None and accepts_generator(defense):
        return defense(images, generator=generator)
    return defense(images)


class BPDAFunction(torch.autograd.Function):
    """Forward: ``defense(images)`` (no graph is built); backward: the identity."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        images: torch.Tensor,
        defense: DefenseFn,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        with torch.no_grad():
            out = call_defense(defense, images.detach(), generator)
        if out.shape != images.shape:
            raise ValueError(
                f"BPDA needs a shape-preserving defense: {tuple(images.shape)} -> "
                f"{tuple(out.shape)}"
            )
        return out.to(images.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        return grad_output, None, None


class BPDA:
    """``defense`` with an identity backward pass: ``(x, generator=None) -> defense(x)``.

    Values are exactly ``defense(x)``; ``d out / d x`` is taken to be the identity.
    """

    def __init__(self, defense: DefenseFn) -> None:
        if not callable(defense):
            raise ValueError(f"defense must be callable images -> images, got {defense!r}")
        self.defense = defense

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return BPDAFunction.apply(images, self.defense, generator)

    def __repr__(self) -> str:
        return f"BPDA({self.defense!r})"


def defense_in_loop(defense: object, mode: str = "full") -> DefenseFn:
    """The callable an attack puts in its loop for ``defense`` (a ``defense.Defense``, a
    ``DiffusionPurifier`` or any ``(x[, generator]) -> x`` callable) in ``mode``
    (``"full"`` or ``"bpda"``). A ``Defense`` contributes its purifier, which takes the
    attack's generator so each EOT draw gets fresh noise."""
    if mode not in ADAPTIVE_MODES:
        raise ValueError(f"mode must be one of {ADAPTIVE_MODES}, got {mode!r}")
    fn = getattr(defense, "purifier", defense)
    if not callable(fn):
        raise ValueError(f"defense must be callable or have a callable .purifier, got {defense!r}")
    return BPDA(fn) if mode == "bpda" else fn


def adaptive_attack(
    metric: Callable[[torch.Tensor], torch.Tensor],
    defense: object | None,
    mode: str = "full",
    *,
    attack: str = "ifgsm",
    eot_samples: int = 1,
    **options: Any,
) -> Attack:
    """``attack`` (a registry name) on ``metric(defense(x))`` with the defense in ``mode``;
    ``defense=None`` attacks the bare metric (then EOT has nothing to average: one sample).
    ``options`` go to the attack (``eps``, ``steps``, ``alpha``...)."""
    if defense is None:
        return make_attack(attack, metric, **options)
    loop = defense_in_loop(defense, mode)
    return make_attack(attack, metric, defense=loop, eot_samples=eot_samples, **options)
