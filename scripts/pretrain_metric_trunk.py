#!/usr/bin/env python
"""Pre-train a stand-in metric's trunk without labels.

A command line over ``training.metric_trunk`` (its docstring has the details)::

    python scripts/pretrain_metric_trunk.py --help
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.cli_options import run_main  # noqa: E402
from training.metric_trunk import main  # noqa: E402

if __name__ == "__main__":
    run_main(main, "pretrain_metric_trunk.py")
