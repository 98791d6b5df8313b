#!/usr/bin/env python
"""Train a universal adversarial perturbation.

A command line over ``training.uap`` (its docstring has the details)::

    python scripts/train_uap.py --help
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.cli_options import run_main  # noqa: E402
from training.uap import main  # noqa: E402

if __name__ == "__main__":
    run_main(main, "train_uap.py")
