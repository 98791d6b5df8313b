"""The purifier's tunable knobs, their validation and where their defaults come from.

Defaults are read from ``purifier/defaults.json`` when that file exists (the tuner writes it),
else from ``PROVISIONAL_DEFAULTS`` below. The provisional values are a plain DiffPure chain
(Nie et al., ICML 2022) at a mild noise level: ``t_star = 60`` (image noise std ~26/255,
see ``diffusion.timestep_to_sigma``), two ancestral DDPM steps, no ensemble, no unsharp
masking. They stay provisional until the tuner has written ``defaults.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusion.precision import check_precision
from schedulers import (
    NUM_TRAIN_TIMESTEPS,
    SAMPLERS,
    SPACINGS,
    ddim_kept_timesteps,
    ddim_t_stars,
    kept_timesteps,
    nearest_ddim_t_star,
)

DEFAULTS_FILE = Path(__file__).resolve().parent / "defaults.json"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PurifierConfig:
    """Knobs of ``DiffusionPurifier``; every field is validated on construction (ValueError).

    Attributes:
        t_star: first diffusion step of the chain (integer training step, 1..999); the input is
            noised to this step and denoised back.
        steps: reverse steps run from ``t_star`` to the clean image (1..t_star + 1).
        sampler: ``"ddpm"`` (ancestral, stochastic) or ``"ddim"`` (deterministic, eta = 0;
            needs ``t_star + 1 == steps * r`` with ``r`` dividing 1000).
        spacing: how the kept steps are spread: ``"uniform"`` or ``"quadratic"`` (ddpm only).
        ensemble: number of independent purifications averaged per call (>= 1).
        unsharp_amount: unsharp-masking gain applied after denoising, ``x + a (x - blur(x))``;
            0 disables it.
        unsharp_radius: standard deviation in pixels of the Gaussian blur of unsharp masking.
        gate: perturbation strength (RMS, 1/255 units) estimated by the perturbation detector
            below which an image is returned unchanged; 0 purifies every image.
        t_star_max: noise level for images whose estimated perturbation reaches
            ``strength_ramp``; between, each image's noise level rises linearly from
            ``t_star`` (estimate 0) and is rounded to an integer step (snapped to a valid
            grid for ``ddim``). 0 noises every image to ``t_star``. ``t_star`` stays the
            floor, so an attacker who fools the detector gets ``t_star``, never less.
        strength_ramp: estimated perturbation strength (RMS, 1/255 units) at which the noise
            level reaches ``t_star_max``.
        precision: the denoiser's arithmetic: ``"float32"``, ``"bfloat16"`` (autocast) or
            ``"auto"``, bfloat16 where the device runs it natively (``diffusion.precision``):
            3.1x faster on an AMX CPU (docs/precision.md), pixels within ~1/255 of float32.
            Pin ``"float32"`` for results identical across machines.

    The perturbation detector is loaded only when ``gate > 0`` or ``t_star_max > 0``
    (``uses_detector``).
    """

    t_star: int = 60
    steps: int = 2
    sampler: str = "ddpm"
    spacing: str = "uniform"
    ensemble: int = 1
    unsharp_amount: float = 0.0
    unsharp_radius: float = 1.0
    gate: float = 0.0
    t_star_max: int = 0
    strength_ramp: float = 8.0
    precision: str = "auto"

    def __post_init__(self) -> None:
        self._plain_numbers()
        _check_float("gate", self.gate, minimum=0.0)
        _check_float("strength_ramp", self.strength_ramp, minimum=0.0, strict=True)
        _check_int("t_star_max", self.t_star_max, minimum=0)
        _check_int("ensemble", self.ensemble, minimum=1)
        _check_float("unsharp_amount", self.unsharp_amount, minimum=0.0)
        _check_float("unsharp_radius", self.unsharp_radius, minimum=0.0, strict=True)
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        check_precision(self.precision)
        if self.spacing not in SPACINGS:
            raise ValueError(f"spacing must be one of {SPACINGS}, got {self.spacing!r}")
        if self.sampler == "ddim" and self.spacing != "uniform":
            raise ValueError(
                f"the ddim sampler needs spacing 'uniform' (an evenly spaced grid), "
                f"got {self.spacing!r}"
            )
        # The same checks make_scheduler runs, so a bad chain fails here with a clear message.
        if self.sampler == "ddim":
            ddim_kept_timesteps(self.t_star, self.steps)
        else:
            kept_timesteps(self.t_star, self.steps, self.spacing)
        if self.t_star_max and self.t_star_max <= self.t_star:
            raise ValueError(
                f"t_star_max must be 0 (off) or above t_star={self.t_star}, got "
                f"{self.t_star_max}: raise t_star_max or set it to 0 for a fixed noise level"
            )
        if self.t_star_max:
            try:
                if self.sampler == "ddim":
                    nearest_ddim_t_star(self.t_star_max, self.steps)
                else:
                    kept_timesteps(self.t_star_max, self.steps, self.spacing)
            except ValueError as err:
                raise ValueError(f"bad t_star_max={self.t_star_max}: {err}") from err

    def _plain_numbers(self) -> None:
        """Numeric knobs as Python ``int``/``float`` (a numpy scalar would not survive
        ``json.dumps(to_dict())``); anything else is left for the checks to refuse."""
        for name in ("t_star", "steps", "ensemble", "t_star_max"):
            value = getattr(self, name)
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                object.__setattr__(self, name, int(value))
        for name in ("gate", "unsharp_amount", "unsharp_radius", "strength_ramp"):
            value = getattr(self, name)
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                object.__setattr__(self, name, float(value))

    @property
    def uses_detector(self) -> bool:
        """Whether the knobs need the perturbation detector (a gate or a noise-level ramp)."""
        return self.gate > 0 or self.t_star_max > 0

    def noise_level(self, strength: float) -> int:
        """The noise level (integer step) for an image whose estimated perturbation strength
        is ``strength`` (RMS, 1/255 units): ``t_star`` when the ramp is off, else rising
        linearly to ``t_star_max`` at ``strength_ramp`` and flat above. Not snapped to the
        DDIM grid (``make_scheduler(..., snap_to_grid=True)`` does that)."""
        if not self.t_star_max:
            return self.t_star
        share = min(max(strength / self.strength_ramp, 0.0), 1.0)
        return self.t_star + round((self.t_star_max - self.t_star) * share)

    def replace(self, **changes: Any) -> PurifierConfig:
        """A copy with ``changes`` applied (``None`` values are ignored), validated again."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown purifier option(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def override(self, **changes: Any) -> PurifierConfig:
        """A copy with a user's ``changes`` (``None`` values are ignored), where the knobs
        coupled to a changed one follow it unless they are changed too:

        - a new ``t_star`` moves a noise-level ramp with it, keeping its span
          (``t_star_max - t_star``), so ``t_star=100`` over defaults 60..80 gives 100..120
          (capped at the last training step; off when no room is left);
        - ``sampler="ddim"`` (or new ``steps`` with ddim) without a ``t_star`` snaps the
          default ``t_star`` to the nearest level a DDIM grid can start from, and sets
          ``spacing`` to ``"uniform"``;
        - with ddim, a ramp whose top snaps back to ``t_star`` (every level on it would run
          the same chain) is widened to the next grid level above ``t_star`` (one DDIM step:
          49..69 becomes 49..99), or turned off when there is none.

        Each such adjustment is logged. Knobs given explicitly are taken as they are and
        validated (``ValueError``), as ``replace`` does.
        """
        given = {k: v for k, v in changes.items() if v is not None}
        adjusted: dict[str, Any] = {}
        sampler = given.get("sampler", self.sampler)
        steps = given.get("steps", self.steps)
        t_star = given.get("t_star", self.t_star)
        if sampler == "ddim" and "t_star" not in given and _is_positive_int(steps):
            if "spacing" not in given and self.spacing != "uniform":
                adjusted["spacing"] = "uniform"
            snapped = nearest_ddim_t_star(t_star, steps)
            if snapped != t_star:
                adjusted["t_star"] = t_star = snapped
        if (
            self.t_star_max
            and "t_star_max" not in given
            and t_star != self.t_star
            and _is_positive_int(t_star)
        ):
            shifted = min(t_star + (self.t_star_max - self.t_star), NUM_TRAIN_TIMESTEPS - 1)
            adjusted["t_star_max"] = shifted if shifted > t_star else 0
        top = adjusted.get("t_star_max", self.t_star_max)
        ramp_collapses = (
            sampler == "ddim"
            and top
            and "t_star_max" not in given
            and _is_positive_int(steps)
            and _is_positive_int(t_star)
            and nearest_ddim_t_star(top, steps) <= t_star
        )
        if ramp_collapses:
            above = [level for level in ddim_t_stars(steps) if level > t_star]
            adjusted["t_star_max"] = above[0] if above else 0
        if adjusted:
            logger.info(
                "adjusted %s to go with the given %s",
                ", ".join(f"{k}={v}" for k, v in adjusted.items()),
                ", ".join(f"{k}={v}" for k, v in given.items()),
            )
        return self.replace(**{**given, **adjusted})

    def to_dict(self) -> dict[str, Any]:
        """The knobs as a JSON-ready dict."""
        return dataclasses.asdict(self)


def _is_positive_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def _check_int(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_float(name: str, value: object, minimum: float, strict: bool = False) -> None:
    ok = (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > minimum if strict else value >= minimum)
    )
    if not ok:
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {relation} {minimum}, got {value!r}")


PROVISIONAL_DEFAULTS = PurifierConfig()


def check_config(config: object) -> PurifierConfig:
    """``config`` if it is a ``PurifierConfig``, else ``ValueError`` (make one from a dict of
    knobs with ``PurifierConfig(**knobs)``)."""
    if not isinstance(config, PurifierConfig):
        raise ValueError(
            f"config must be a PurifierConfig, got {type(config).__name__}: "
            "use PurifierConfig(**knobs)"
        )
    return config


def load_default_config(path: str | Path | None = None) -> PurifierConfig:
    """The default knobs: ``path`` (default ``purifier/defaults.json``) if it exists, laid over
    ``PROVISIONAL_DEFAULTS``; ValueError if the file is unreadable or holds a bad value."""
    path = DEFAULTS_FILE if path is None else Path(path)
    if not path.is_file():
        return PROVISIONAL_DEFAULTS
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read purifier defaults {path}: {err}") from err
    if not isinstance(values, dict):
        raise ValueError(f"purifier defaults {path} must hold a JSON object of option: value")
    try:
        return PROVISIONAL_DEFAULTS.replace(**values)
    except ValueError as err:
        raise ValueError(f"bad purifier defaults in {path}: {err}") from err


def config_from_options(options: object) -> PurifierConfig:
    """The defaults with every knob that ``options`` (e.g. an argparse namespace) sets, coupled
    knobs following them (``PurifierConfig.override``)."""
    knobs = {f.name: getattr(options, f.name, None) for f in dataclasses.fields(PurifierConfig)}
    return load_default_config().override(**knobs)
