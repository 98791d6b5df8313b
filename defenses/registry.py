"""The one list of defenses: ``DEFENSES`` maps a name to its factory, the label reports give it
and its kind (which default benchmark group it joins). ``make_defense(name, device)`` builds one
for ``test.py --defense``, the benchmark (``defenses.specs``) and experiments.

A factory takes a device and returns an object with ``apply_defense(images)`` (float
``(B, 3, H, W)`` in [0, 1] -> same dtype and device in [0, 1]; ``resize``, the competition's
baseline, returns the half-size image, every other defense here the input's shape). A
diffusion defense's factory also takes ``weights`` and ``seed``. Adding a defense is its file
plus one line in ``DEFENSES`` (or ``register_defense`` at run time); heavy ones import their
code inside the factory.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
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


def project_defense(
    device: torch.device,
    *,
    weights: str | Path | None = None,
    seed: int | None = None,
    **knobs: Any,
) -> PurifyingDefense:
    """The project's ``defense.Defense``, with ``PurifierConfig`` knobs overriding the
    defaults (``ddpm:gate=0`` in a benchmark spec)."""
    from defense import Defense

    return Defense(device, weights=weights, seed=seed, **knobs)


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


REFERENCE = "reference"
"""Kind of the undefended run every benchmark compares with."""
CLASSICAL = "classical"
"""Kind of the image-processing baselines (the benchmark's Gain limit is set against them)."""
DIFFUSION = "diffusion"
"""Kind of the diffusion defenses: their factories take ``weights`` and ``seed``."""
OTHER = "other"
"""Kind of defenses run only when named."""
BENCHMARK_KINDS = (REFERENCE, CLASSICAL, DIFFUSION)


@dataclass(frozen=True)
class RegisteredDefense:
    """A ``DEFENSES`` entry: the factory, the label reports give the defense with its default
    options, and its kind (``REFERENCE``, ``CLASSICAL``, ``DIFFUSION`` or ``OTHER``)."""

    factory: DefenseFactory
    label: str
    kind: str = OTHER


DEFENSES: dict[str, RegisteredDefense] = {
    "none": RegisteredDefense(IdentityDefense, "none (undefended)", REFERENCE),
    "resize": RegisteredDefense(
        ResizeDefense, "baseline: resize x0.5 (half-size output)", CLASSICAL
    ),
    "resize_updown": RegisteredDefense(DownUpResizeDefense, "resize x0.5 and back (down-up blur)"),
    "jpeg": RegisteredDefense(JpegDefense, "JPEG q50", CLASSICAL),
    "blur": RegisteredDefense(GaussianBlurDefense, "Gaussian blur 3x3", CLASSICAL),
    "median": RegisteredDefense(MedianDefense, "median 3x3", CLASSICAL),
    "diffpure": RegisteredDefense(diffpure_defense, "DiffPure (t*=100, 100 DDPM steps)", DIFFUSION),
    "ddpm": RegisteredDefense(project_defense, "ours (defense.Defense)", DIFFUSION),
}

# The defense the competition imports (defense.Defense).
DEFAULT_DEFENSE = "ddpm"


def register_defense(
    name: str, factory: DefenseFactory, label: str | None = None, kind: str = OTHER
) -> None:
    """Add ``factory`` under ``name`` (``label`` defaults to the name); ``ValueError`` if the
    name is taken or the kind unknown."""
    if name in DEFENSES:
        raise ValueError(f"a defense named {name!r} is already registered")
    if kind not in (*BENCHMARK_KINDS, OTHER):
        raise ValueError(f"unknown kind {kind!r}; choose one of {[*BENCHMARK_KINDS, OTHER]}")
    DEFENSES[name] = RegisteredDefense(factory, label or name, kind)


def defense_names(kind: str) -> tuple[str, ...]:
    """The registered defenses of ``kind``, in registry order."""
    return tuple(name for name, entry in DEFENSES.items() if entry.kind == kind)


def benchmark_defenses() -> tuple[str, ...]:
    """What the benchmark runs by default: the reference, the classical baselines, then the
    diffusion defenses."""
    return tuple(name for kind in BENCHMARK_KINDS for name in defense_names(kind))


def defense_options(name: str) -> frozenset[str]:
    """The keyword options the factory of ``name`` takes besides the device, e.g.
    ``{"quality"}`` for ``jpeg``; ``ValueError`` for an unknown name."""
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; choose one of {sorted(DEFENSES)}")
    parameters = list(inspect.signature(DEFENSES[name].factory).parameters.values())[1:]
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
    return DEFENSES[name].factory(resolve_device(device), **options)
