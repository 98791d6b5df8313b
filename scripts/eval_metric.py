#!/usr/bin/env python
"""Evaluate a metric (stand-in or p1q2.pth) on CLIVE.

A command line over ``evaluation.metric_eval`` (its docstring has the details)::

    python scripts/eval_metric.py --help
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.cli_options import run_main  # noqa: E402
from evaluation.metric_eval import main  # noqa: E402

if __name__ == "__main__":
    run_main(main, "eval_metric.py")
