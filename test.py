#!/usr/bin/env python
"""Score a defense of the Linearity metric the way the MSU competition harness does.

A command line over ``evaluation.harness`` (its docstring has the details)::

    python test.py --help
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from evaluation.harness import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
