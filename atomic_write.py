"""Atomic file writes: write a temp file beside the target, then rename it over the target.

A reader never sees a half-written file, and a killed writer leaves only a ``.<name>.*.part``
temp file. ``tempfile.mkstemp`` creates files readable by their owner only; ``publish`` gives
the result the permissions a plain ``open(path, "w")`` would (``0o666`` minus the umask).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

TEMP_SUFFIX = ".part"


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def temp_path(path: Path) -> Path:
    """A new, empty temp file ``.<name>.<random>.part`` in ``path``'s folder (created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def publish(tmp: Path, path: Path) -> None:
    """Give ``tmp`` default permissions and rename it over ``path``."""
    os.chmod(tmp, _default_mode())
    os.replace(tmp, path)


def write_text_atomic(text: str, path: str | Path) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
