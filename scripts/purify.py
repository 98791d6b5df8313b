#!/usr/bin/env python
"""Purify every image in a folder into another folder.

A command line over ``purifier.cli`` (its docstring has the details)::

    python scripts/purify.py --help
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from purifier.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
