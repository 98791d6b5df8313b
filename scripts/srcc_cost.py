#!/usr/bin/env python
"""What costs a defense SRCC, read off a benchmark run.

A command line over ``evaluation.srcc_cost`` (its docstring has the details)::

    python scripts/srcc_cost.py --help
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.cli_options import run_main  # noqa: E402
from evaluation.srcc_cost import main  # noqa: E402

if __name__ == "__main__":
    run_main(main, "srcc_cost.py")
