"""Defense specs, as the benchmark and the tuner name what they run: ``name``,
``name@WEIGHTS`` (a diffusion defense on another denoiser), ``name:knob=value`` (options
changed) and chains ``a+b``. ``build_defense`` turns a spec into a defense; ``defense_label``
names it in reports."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from common.devices import resolve_device
from common.paths import WEIGHTS_DIR
from defenses.chain import ChainedDefense
from defenses.registry import (
    DEFENSES,
    DIFFUSION,
    PurifyingDefense,
    defense_names,
    defense_options,
    make_defense,
    project_defense,
)
from purifier.config import PurifierConfig

WEIGHTS_SEPARATOR = "@"
"""``ddpm@ddpm-v1`` is the ``ddpm`` defense on another denoiser (a folder under ``weights/``
or a path), so several weight versions can be compared in one run."""


KNOB_SEPARATOR = ":"
"""``ddpm:gate=0`` (or ``ddpm@ddpm-v1:t_star=60:steps=1``) is the ``ddpm`` defense with those
``PurifierConfig`` knobs changed, and ``jpeg:quality=75`` a baseline with its own option
changed (``defenses.registry.defense_options``), so variants can be compared in one run."""

SPEC_SET = frozenset({"weights", "seed"})
"""Factory options a spec sets otherwise (``@WEIGHTS``, the run's seed), never as knobs."""


CHAIN_SEPARATOR = "+"
"""``jpeg+ddpm`` (or ``jpeg+ddpm:t_star=40``) runs ``jpeg``, then ``ddpm`` on its output: each
part is a spec of its own, so a pre-filter in front of the purifier is measured in one run."""


def split_chain(spec: str) -> list[str]:
    """``"jpeg+ddpm:gate=0"`` -> ``["jpeg", "ddpm:gate=0"]``; ``"ddpm"`` -> ``["ddpm"]``.
    ``ValueError`` for an empty part."""
    parts = spec.split(CHAIN_SEPARATOR)
    if not all(parts):
        raise ValueError(f"{spec!r}: a chain is written name+name, with no empty part")
    return parts


def split_knobs(spec: str) -> tuple[str, dict[str, Any]]:
    """``"ddpm@v1:gate=0:sampler=ddim"`` -> ``("ddpm@v1", {"gate": 0, "sampler": "ddim"})``.

    Values are read as JSON numbers where they parse, else kept as strings. ``ValueError``
    for a knob without ``=``, or one the defense does not take: ``ddpm`` takes the
    ``PurifierConfig`` fields, a registered baseline its factory's options (``jpeg:quality=75``,
    ``resize:scale=0.75``, ``blur:sigma=1.2``). Values are checked when the defense is built.
    """
    base, *pairs = spec.split(KNOB_SEPARATOR)
    knobs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{spec!r}: knobs are written name=value, got {pair!r}")
        try:
            knobs[key] = json.loads(value)
        except json.JSONDecodeError:
            knobs[key] = value
    if knobs:
        name = base.partition(WEIGHTS_SEPARATOR)[0]
        if name == "ddpm":
            unknown = sorted(set(knobs) - {f.name for f in dataclasses.fields(PurifierConfig)})
            if unknown:
                raise ValueError(f"{spec!r}: unknown purifier knob(s) {unknown}")
        else:
            accepted = defense_options(name) - SPEC_SET
            unknown = sorted(set(knobs) - accepted)
            if unknown:
                raise ValueError(
                    f"{spec!r}: {name} takes no knob(s) {unknown}; "
                    f"its knobs: {sorted(accepted) or 'none'}"
                )
    return base, knobs


def split_defense_spec(spec: str) -> tuple[str, Path | None]:
    """``"ddpm@ddpm-v1"`` -> ``("ddpm", <weights>/ddpm-v1)``; ``"jpeg"`` -> ``("jpeg", None)``.
    Knobs (``:name=value``, see ``split_knobs``) are ignored here.

    Only the diffusion defenses (``ddpm``, ``diffpure``) take weights; the folder is used as
    given when it exists, else looked up under the project's ``weights/``. ``ValueError`` if
    it is found in neither place or the defense takes no weights.
    """
    name, sep, folder = split_knobs(spec)[0].partition(WEIGHTS_SEPARATOR)
    if not sep:
        return name, None
    if name not in defense_names(DIFFUSION) or not folder:
        takers = " and ".join(f"{n}@<weights>" for n in sorted(defense_names(DIFFUSION)))
        raise ValueError(f"{spec!r}: only {takers} take weights")
    for candidate in (Path(folder), WEIGHTS_DIR / folder):
        if candidate.is_dir():
            return name, candidate
    raise ValueError(f"{spec!r}: no weights folder {folder} (nor {WEIGHTS_DIR / folder})")


def defense_label(spec: str) -> str:
    """Human label of a defense spec, e.g. ``ours (defense.Defense), weights ddpm-v1``; the
    parts of a chain are joined by ``, then ``."""
    parts = split_chain(spec)
    if len(parts) > 1:
        return ", then ".join(defense_label(part) for part in parts)
    name, weights = split_defense_spec(spec)
    knobs = split_knobs(spec)[1]
    # a baseline's label names its default option ("JPEG q50"), so with knobs use the name
    label = DEFENSES[name].label if name == "ddpm" or not knobs else name
    label = label if weights is None else f"{label}, weights {weights.name}"
    return label + "".join(f", {k}={v}" for k, v in knobs.items())


def build_defense(
    name: str,
    device: str | torch.device = "cpu",
    *,
    weights: str | Path | None = None,
    seed: int | None = 0,
) -> PurifyingDefense:
    """A registered defense (or ``ddpm@<weights>``, or a chain ``a+b``); the diffusion ones
    get ``weights`` (the spec's own folder first) and a fixed ``seed``."""
    parts = split_chain(name)
    if len(parts) > 1:
        return ChainedDefense([build_defense(p, device, weights=weights, seed=seed) for p in parts])
    knobs = split_knobs(name)[1]
    name, own_weights = split_defense_spec(name)
    weights = own_weights if own_weights is not None else weights
    if name == "ddpm":  # its knobs are PurifierConfig fields, checked by split_knobs
        return project_defense(resolve_device(device), weights=weights, seed=seed, **knobs)
    if name in defense_names(DIFFUSION):
        return make_defense(name, device, weights=weights, seed=seed, **knobs)
    return make_defense(name, device, **knobs)
