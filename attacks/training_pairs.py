"""(clean, attacked) training pairs made on the fly by the attack suite, with random strengths.

``RandomAttacks`` draws an attack of the registry and its hyper-parameters (budget, iterations,
step, EOT) from a generator, so a purifier fine-tuned on its output sees every family at many
strengths rather than the benchmark's one setting. ``uap`` is special: the shipped universal
perturbation is one fixed pattern that a network could memorise, so the ``uap`` draw instead
fits a fresh batch-universal perturbation (one signed pattern shared by the whole batch, in the
manner of Moosavi-Dezfooli et al., "Universal adversarial perturbations", CVPR 2017).

``PairPool`` keeps the most recent pairs so each costly attack is reused by a few training
steps; samples get the same random flip/rotation on both images.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from attacks.base import Attack, check_int
from attacks.eot import GaussianNoise
from attacks.registry import ATTACKS, make_attack
from common.image_checks import check_images

Metric = Callable[[torch.Tensor], torch.Tensor]


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, device=generator.device))


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in ``low..high`` inclusive."""
    return int(torch.randint(low, high + 1, (), generator=generator, device=generator.device))


def _defaults(name: str) -> dict[str, Any]:
    """The registered attack's keyword defaults (eps, steps, alpha where it has them)."""
    params = inspect.signature(ATTACKS[name].__init__).parameters
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


@dataclass
class RandomAttacks:
    """Draw attacks by name with random hyper-parameters.

    Bounded attacks (L-inf or RMSE) get ``eps`` uniform in ``eps_range`` ([0, 1] units) and a
    step scaled so ``steps x alpha`` covers the budget as the default setting does;
    unbounded ones (korhonen, zhang-ssim, adv-cf, ssah) get their default step times a factor
    in [0.5, 2]. Iterative attacks take ``1..max_steps`` iterations; with probability
    ``eot_prob`` the gradient is averaged over 2 draws of small Gaussian noise (EOT).
    """

    metric: Metric
    names: Sequence[str] = field(default_factory=lambda: tuple(ATTACKS))
    eps_range: tuple[float, float] = (2 / 255, 16 / 255)
    max_steps: int = 10
    eot_prob: float = 0.2

    def __post_init__(self) -> None:
        unknown = [n for n in self.names if n not in ATTACKS]
        if not self.names or unknown:
            raise ValueError(f"names must be attacks of {list(ATTACKS)}, got {list(self.names)}")
        low, high = self.eps_range
        if not 0 < low <= high <= 1:
            raise ValueError(f"eps_range must satisfy 0 < low <= high <= 1, got {self.eps_range}")
        check_int("max_steps", self.max_steps, minimum=1)
        if not 0.0 <= self.eot_prob <= 1.0:
            raise ValueError(f"eot_prob must be in [0, 1], got {self.eot_prob}")

    def draw(self, generator: torch.Generator) -> tuple[str, dict[str, Any]]:
        """``(name, overrides)`` for ``make_attack``; uses only ``generator``."""
        name = self.names[_randint(generator, 0, len(self.names) - 1)]
        defaults = _defaults(name)
        options: dict[str, Any] = {}
        steps = 1 if name in ("fgsm", "uap") else _randint(generator, 1, self.max_steps)
        bounded = ATTACKS[name].bound is not None
        if bounded:
            options["eps"] = _uniform(generator, *self.eps_range)
        if name not in ("fgsm", "uap"):
            options["steps"] = steps
        if "alpha" in defaults and name != "uap":
            alpha = defaults["alpha"]
            if bounded:  # cover the budget in ``steps`` as the default covers it
                alpha *= (options["eps"] / defaults["eps"]) * (defaults["steps"] / steps)
                alpha = min(alpha, options["eps"])
            else:
                alpha *= _uniform(generator, 0.5, 2.0)
            options["alpha"] = alpha
        if name != "uap" and _uniform(generator, 0.0, 1.0) < self.eot_prob:
            options["eot_samples"] = 2
            options["eot_transform"] = GaussianNoise(1 / 255)
        return name, options

    def attack(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, str]:
        """Attack ``(B, 3, H, W)`` images in [0, 1] with one random draw; ``(attacked, name)``."""
        name, options = self.draw(generator)
        if name == "uap":
            return batch_universal(self.metric, images, options["eps"], generator), name
        built: Attack = make_attack(name, self.metric, **options)
        return built(images, generator), name


def batch_universal(
    metric: Metric, images: torch.Tensor, eps: float, generator: torch.Generator, steps: int = 3
) -> torch.Tensor:
    """Add one L-inf ``eps`` pattern, shared by the batch, that raises its summed score.

    Signed-gradient ascent on a shared ``(1, 3, H, W)`` perturbation from a random start;
    returns ``(B, 3, H, W)`` in [0, 1]. Gradients are enabled here (as in every attack).
    """
    check_images(images)
    check_int("steps", steps, minimum=1)
    shape = (1, *images.shape[1:])
    start = torch.rand(shape, generator=generator, device=generator.device) * 2 - 1
    delta = (eps * start).to(images.device, images.dtype)
    with torch.enable_grad():
        for _ in range(steps):
            delta.requires_grad_(True)
            score = metric((images + delta).clamp(0, 1)).sum()
            (grad,) = torch.autograd.grad(score, delta)
            delta = (delta.detach() + (eps / steps) * 1.5 * grad.sign()).clamp(-eps, eps)
    return (images + delta.detach()).clamp(0, 1)


class PairPool:
    """A FIFO of ``(clean, attacked)`` pairs ``(3, S, S)`` in [0, 1] with joint augmentation."""

    def __init__(self, capacity: int) -> None:
        check_int("capacity", capacity, minimum=1)
        self.capacity = capacity
        self.clean: list[torch.Tensor] = []
        self.attacked: list[torch.Tensor] = []
        self.names: list[str] = []

    def __len__(self) -> int:
        return len(self.clean)

    def add(self, clean: torch.Tensor, attacked: torch.Tensor, name: str) -> None:
        """Append ``(B, 3, S, S)`` pairs (dropping the oldest beyond capacity)."""
        if clean.shape != attacked.shape:
            raise ValueError(f"pair shapes differ: {tuple(clean.shape)} vs {tuple(attacked.shape)}")
        for c, a in zip(clean.detach().cpu(), attacked.detach().cpu(), strict=True):
            self.clean.append(c)
            self.attacked.append(a)
            self.names.append(name)
        excess = len(self.clean) - self.capacity
        if excess > 0:
            del self.clean[:excess], self.attacked[:excess], self.names[:excess]

    def sample(
        self, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(clean, attacked)`` ``(batch_size, 3, S, S)`` drawn with replacement, each pair
        under one random rotation by 90 degrees and flip."""
        check_int("batch_size", batch_size, minimum=1)
        if not self.clean:
            raise ValueError("the pair pool is empty: add pairs first")
        clean, attacked = [], []
        for _ in range(batch_size):
            i = _randint(generator, 0, len(self.clean) - 1)
            turns, flip = _randint(generator, 0, 3), _randint(generator, 0, 1)
            pair = [torch.rot90(x, turns, dims=(1, 2)) for x in (self.clean[i], self.attacked[i])]
            if flip:
                pair = [x.flip(-1) for x in pair]
            clean.append(pair[0])
            attacked.append(pair[1])
        return torch.stack(clean), torch.stack(attacked)

    def mean_linf(self) -> float:
        """Mean over pairs of ``max |attacked - clean|`` in [0, 1] units (nan when empty)."""
        if not self.clean:
            return math.nan
        pairs = zip(self.clean, self.attacked, strict=True)
        return float(torch.stack([(a - c).abs().amax() for c, a in pairs]).mean())
