#!/usr/bin/env python
"""Build an attacked dataset from a folder of clean images.

A command line over ``attacks.dataset`` (its docstring has the details)::

    python scripts/make_dataset.py --help
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attacks.dataset import main  # noqa: E402
from common.cli_options import run_main  # noqa: E402

if __name__ == "__main__":
    run_main(main, "make_dataset.py")
