#!/usr/bin/env python
"""Leave-one-attack-out fine-tuning of the bridge.

A command line over ``training.leave_one_attack_out`` (its docstring has the details)::

    python scripts/leave_one_attack_out.py --help
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.leave_one_attack_out import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
