#!/usr/bin/env python
"""Train the perturbation detector.

A command line over ``training.detector`` (its docstring has the details)::

    python scripts/train_detector.py --help
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.detector import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
