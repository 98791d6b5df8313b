"""The purifier's knobs as command-line options, shared by ``purify``, the benchmark, the tuner,
the memory probe and the submission export; ``purifier.config.config_from_options`` reads them."""

from __future__ import annotations

import argparse

from common.cli_options import integer, positive_int
from diffusion.precision import PRECISIONS
from schedulers import SAMPLERS, SPACINGS
from schedulers.timestep_spacing import NUM_TRAIN_TIMESTEPS


def noise_level(text: str) -> int:
    """A diffusion noise level (training step) in ``1..NUM_TRAIN_TIMESTEPS - 1``."""
    value = integer(text)
    if not 1 <= value < NUM_TRAIN_TIMESTEPS:
        raise argparse.ArgumentTypeError(
            f"must be a noise level in 1..{NUM_TRAIN_TIMESTEPS - 1}, got {text!r}"
        )
    return value


def add_purifier_knobs(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The purifier's knobs as options (``--t-star`` ... ``--precision``), each None unless
    given, for ``purifier.config.config_from_options``."""
    add = parser.add_argument
    add("--t-star", type=noise_level, default=None, help="noise level (training step)")
    add("--steps", type=positive_int, default=None, help="reverse diffusion steps")
    add("--sampler", choices=SAMPLERS, default=None)
    add("--spacing", choices=SPACINGS, default=None)
    add("--ensemble", type=positive_int, default=None, help="average N stochastic runs")
    add("--unsharp-amount", type=float, default=None, help="0 disables")
    add("--unsharp-radius", type=float, default=None, help="blur std in px")
    add(
        "--gate",
        type=float,
        default=None,
        help="leave images whose estimated perturbation (RMS, 1/255) is below this; 0: off",
    )
    add(
        "--t-star-max",
        type=int,
        default=None,
        help="per-image noise level: rises from --t-star to this with the estimated "
        "perturbation strength; 0: every image at --t-star",
    )
    add(
        "--strength-ramp",
        type=float,
        default=None,
        help="estimated perturbation (RMS, 1/255) at which --t-star-max is reached",
    )
    add(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="denoiser arithmetic: auto (bfloat16 where the hardware runs it natively), "
        "float32 (identical results across machines) or bfloat16",
    )
