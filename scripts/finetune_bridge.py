#!/usr/bin/env python
"""Fine-tune the purification DDPM as an attacked-to-clean bridge.

A command line over ``training.bridge`` (its docstring has the details)::

    python scripts/finetune_bridge.py --help
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.bridge import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
