"""Defenses by name: ``make_defense(name, device)`` for ``test.py --defense`` and experiments.

A factory takes a device and returns an object with ``apply_defense(images)`` (float
``(B, 3, H, W)`` in [0, 1] -> same dtype and device in [0, 1]; ``resize``, the competition's
baseline, returns the half-size image, every other defense here the input's shape). Add new
defenses with ``register_defense``; heavy ones import their code inside the factory.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from common.devices import resolve_device
from defenses.classical import (
    DownUpResizeDefense,
    GaussianBlurDefense,
    IdentityDefense,
    JpegDefense,
    MedianDefense,
    ResizeDefense,
)


class PurifyingDefense(Protocol):
    """Anything with the competition's ``apply_defense`` method."""

    def apply_defense(self, images: torch.Tensor) -> torch.Tensor: ...


DefenseFactory = Callable[[torch.device], PurifyingDefense]


def _project_defense(device: torch.device) -> PurifyingDefense:
    from defense import Defense

    return Defense(device)


# DiffPure as published (Nie et al., ICML 2022): noise to t* = 100 training steps (0.1 of the
# 1000-step schedule), then every one of the 100 ancestral steps back. In the ``schedulers``
# convention step t is t + 1 noising steps from x_0, so the chain starts at t_star = 99 and
# keeps all t_star + 1 = 100 steps. No ensemble, no unsharp masking.
DIFFPURE_KNOBS: dict[str, Any] = {
    "t_star": 99,
    "steps": 100,
    "sampler": "ddpm",
    "spacing": "uniform",
    "ensemble": 1,
    "unsharp_amount": 0.0,
}


def diffpure_defense(
    device: str | torch.device = "cpu",
    *,
    weights: str | Path | None = None,
    seed: int | None = None,
) -> PurifyingDefense:
    """The DiffPure baseline (``DIFFPURE_KNOBS``) on the project's denoiser, whatever
    ``purifier/defaults.json`` says; ``weights``/``seed`` as in ``defense.Defense``."""
    from defense import Defense
    from purifier import PurifierConfig

    return Defense(device, config=PurifierConfig(**DIFFPURE_KNOBS), weights=weights, seed=seed)


DEFENSES: dict[str, DefenseFactory] = {
    "none": IdentityDefense,
    "resize": ResizeDefense,
    "resize_updown": DownUpResizeDefense,
    "jpeg": JpegDefense,
    "blur": GaussianBlurDefense,
    "median": MedianDefense,
    "ddpm": _project_defense,
    "diffpure": diffpure_defense,
}

# The defense the competition imports (defense.Defense).
DEFAULT_DEFENSE = "ddpm"


def register_defense(name: str, factory: DefenseFactory) -> None:
    """Add ``factory`` under ``name``; ``ValueError`` if the name is taken."""
    if name in DEFENSES:
        raise ValueError(f"a defense named {name!r} is already registered")
    DEFENSES[name] = factory


def defense_options(name: str) -> frozenset[str]:
    """The keyword options the factory of ``name`` takes besides the device, e.g.
    ``{"quality"}`` for ``jpeg``; ``ValueError`` for an unknown name."""
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; choose one of {sorted(DEFENSES)}")
    parameters = list(inspect.signature(DEFENSES[name]).parameters.values())[1:]
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(p.name for p in parameters if p.kind in named)


def make_defense(name: str, device: str | torch.device = "cpu", **options: Any) -> PurifyingDefense:
    """Build the defense registered as ``name`` on ``device``, with ``options`` passed to its
    factory (``make_defense("jpeg", quality=75)``; ``defense_options`` lists them).
    ``ValueError`` for an unknown name or option, a bad option value, or a device this machine
    does not have."""
    accepted = defense_options(name)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(
            f"defense {name!r} takes no option(s) {unknown}; "
            f"its options: {sorted(accepted) or 'none'}"
        )
    return DEFENSES[name](resolve_device(device), **options)
