#!/usr/bin/env python
"""Build the competition submission bundle (defense.py and its runtime).

A command line over ``purifier.submission`` (its docstring has the details)::

    python scripts/export_submission.py --help
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from purifier.submission import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
