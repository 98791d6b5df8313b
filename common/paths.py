"""Where the project's files live: the repo root, shipped weights, and the data folder."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_DIR = ROOT / "weights"
DATA_ENV = "PURIFY_DATA"


def default_data_dir() -> Path:
    """``$PURIFY_DATA`` if set, else ``../shared/data`` next to the repository root."""
    env = os.environ.get(DATA_ENV)
    return Path(env) if env else ROOT.parent / "shared" / "data"
