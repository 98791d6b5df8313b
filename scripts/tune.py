#!/usr/bin/env python
"""Tune the purifier's knobs within a time budget.

A command line over ``evaluation.tune_cli`` (its docstring has the details)::

    python scripts/tune.py --help
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.tune_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
