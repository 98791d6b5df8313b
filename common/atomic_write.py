"""Atomic file writes: write a temp file beside the target, then rename it over the target.

A reader never sees a half-written file, and a killed writer leaves only a ``.<name>.*.part``
temp file. ``tempfile.mkstemp`` creates files readable by their owner only; ``publish`` gives
the result the permissions a plain ``open(path, "w")`` would (``0o666`` minus the umask).
``staged_folder`` does the same for a whole folder (weights and their manifest), and
``save_tensors`` for a safetensors file (safetensors >= 0.8 writes its files owner-only too).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file

TEMP_SUFFIX = ".part"


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _default_mode() -> int:
    return 0o666 & ~_umask()


def default_folder_mode() -> int:
    """The permissions a plain ``mkdir`` gives (``0o777`` minus the umask); ``tempfile.mkdtemp``
    gives ``0o700``."""
    return 0o777 & ~_umask()


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


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temp file beside ``path``, then ``publish`` it over ``path``;
    on error the temp file is removed and ``path`` is untouched."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(text: str, path: str | Path) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_tensors(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Write ``tensors`` (contiguous, any device) to the safetensors file ``path`` atomically,
    with default permissions."""
    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


@contextmanager
def staged_folder(folder: str | Path, replace: bool = True) -> Iterator[Path]:
    """Build ``folder`` in the hidden sibling ``.<name>.part`` and move it into place when the
    block ends without error, so the folder appears complete or not at all. Files written
    inside get default permissions, whatever the library that wrote them chose.

    A stale sibling from a killed writer is removed first; on error the sibling is removed.
    With ``replace`` a folder already at ``folder`` is replaced, otherwise the final rename
    fails if a non-empty one has appeared there meanwhile.
    """
    folder = Path(folder)
    tmp = folder.parent / f".{folder.name}{TEMP_SUFFIX}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)  # default permissions, as a plain mkdir gives
    try:
        yield tmp
        mode = _default_mode()
        for path in tmp.rglob("*"):
            if path.is_file() and not path.is_symlink():
                os.chmod(path, mode)
        if replace and folder.exists():
            shutil.rmtree(folder)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
