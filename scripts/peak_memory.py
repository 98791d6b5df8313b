#!/usr/bin/env python
"""Peak memory of purifying one large photo on CPU.

A command line over ``evaluation.peak_memory`` (its docstring has the details)::

    python scripts/peak_memory.py --help
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.peak_memory import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
