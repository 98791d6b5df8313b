#!/usr/bin/env python
"""Gain of the defense under adaptive attacks.

A command line over ``evaluation.adaptive_eval`` (its docstring has the details)::

    python scripts/adaptive_eval.py --help
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.adaptive_eval import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
