#!/usr/bin/env python
"""Benchmark defenses on an attacked dataset.

A command line over ``evaluation.benchmark_cli`` (its docstring has the details)::

    python scripts/benchmark.py --help
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.benchmark_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
