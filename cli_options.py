"""``argparse`` value types shared by the command-line scripts, so a bad option is a usage
error (exit 2, the option named) at parse time, not a traceback after minutes of work."""

from __future__ import annotations

import argparse

from devices import resolve_device


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


def device_name(text: str) -> str:
    """A torch device this machine has (``devices.resolve_device``), kept as the given text."""
    try:
        resolve_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return text


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
