"""What the command-line scripts share so a user's mistake reads as a message: ``argparse``
value types (a bad option is a usage error, exit 2, the option named, at parse time, not a
traceback after minutes of work) and ``run_main``, which turns a bad path or bad data met
later into one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from devices import resolve_device
from schedulers.timestep_spacing import NUM_TRAIN_TIMESTEPS


def positive_int(text: str) -> int:
    """An integer >= 1 (thread counts, steps, batch sizes)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (sizes where 0 means "none")."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (time budgets in minutes)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def noise_level(text: str) -> int:
    """A diffusion noise level (training step) in ``1..NUM_TRAIN_TIMESTEPS - 1``."""
    value = _int(text)
    if not 1 <= value < NUM_TRAIN_TIMESTEPS:
        raise argparse.ArgumentTypeError(
            f"must be a noise level in 1..{NUM_TRAIN_TIMESTEPS - 1}, got {text!r}"
        )
    return value


def report_file(text: str) -> Path:
    """A file to write a report or figures to: not an existing folder (refused before the
    work, not when it is written at the end)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"names a file to write, got the folder {text!r}")
    return path


def markdown_report(text: str) -> Path:
    """A ``report_file`` whose ``.json`` twin (``with_suffix(".json")``) is another file."""
    path = report_file(text)
    if path.suffix.lower() == ".json":
        raise argparse.ArgumentTypeError(
            f"names the Markdown report; its .json twin is written beside it, got {text!r}"
        )
    return path


def device_name(text: str) -> str:
    """A torch device this machine has (``devices.resolve_device``), kept as the given text."""
    try:
        resolve_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return text


def add_purifier_knobs(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The purifier's knobs as options (``--t-star`` ... ``--precision``), each None unless
    given, for ``purifier.config.config_from_options``."""
    from diffusion.precision import PRECISIONS
    from schedulers import SAMPLERS, SPACINGS

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


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def run_main(main: Callable[[], object], script: str) -> None:
    """``sys.exit(main())`` for a script's ``__main__``; a ``ValueError`` or ``OSError`` (a
    missing or unreadable path, a folder where a file goes, data of the wrong layout) exits 1
    with ``<script>: error: <message>`` instead of a traceback."""
    try:
        code = main()
    except (ValueError, OSError) as err:
        sys.exit(f"{script}: error: {err}")
    sys.exit(code if isinstance(code, int) else 0)
