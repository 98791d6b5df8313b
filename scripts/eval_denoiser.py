#!/usr/bin/env python
"""Evaluate a denoiser's weights.

A command line over ``evaluation.denoiser_eval`` (its docstring has the details)::

    python scripts/eval_denoiser.py --help
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.cli_options import run_main  # noqa: E402
from evaluation.denoiser_eval import main  # noqa: E402

if __name__ == "__main__":
    run_main(main, "eval_denoiser.py")
