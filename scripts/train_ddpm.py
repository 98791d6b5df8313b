#!/usr/bin/env python
"""Train (or fine-tune) the purification DDPM.

A command line over ``training.ddpm`` (its docstring has the details)::

    python scripts/train_ddpm.py --help
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.ddpm import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
