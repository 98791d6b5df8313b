#!/usr/bin/env python
"""Probe how much of an attack's perturbation passes through the purifier.

A command line over ``evaluation.leak_probe`` (its docstring has the details)::

    python scripts/leak_probe.py --help
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.cli_options import run_main  # noqa: E402
from evaluation.leak_probe import main  # noqa: E402

if __name__ == "__main__":
    run_main(main, "leak_probe.py")
