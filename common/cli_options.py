"""What the command-line scripts share so a user's mistake reads as a message: ``argparse``
value types (a bad option is a usage error, exit 2, the option named, at parse time, not a
traceback after minutes of work) and ``run_main``, which turns a bad path or bad data met
later into one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from common.devices import resolve_device


def positive_int(text: str) -> int:
    """An integer >= 1 (thread counts, steps, batch sizes)."""
    value = integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (sizes where 0 means "none")."""
    value = integer(text)
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


def integer(text: str) -> int:
    """Any integer, as an ``argparse`` type."""
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
