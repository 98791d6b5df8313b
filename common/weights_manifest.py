"""Manifests for shipped weights: sha256 of every file plus how the weights were made.

Each released folder under ``weights/`` holds ``manifest.json``:
``{"name", "version", "files": {relpath: sha256}, "training": {...}, "created"}``.
Released folders are never overwritten; a new version gets a new folder.
"""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


class WeightsIntegrityError(ValueError):
    """Weights on disk do not match their manifest."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: str | Path, name: str, version: str, **info: Any) -> Path:
    """Hash every file in ``folder`` (except the manifest) and write ``manifest.json``."""
    import torch

    folder = Path(folder)
    files = {
        str(p.relative_to(folder)): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {
        "name": name,
        "version": version,
        "files": files,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": {"python": platform.python_version(), "torch": torch.__version__},
        **info,
    }
    path = folder / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def verify_manifest(folder: str | Path) -> dict[str, Any]:
    """Check every file listed in ``folder/manifest.json`` against its sha256; return the manifest.

    Raises ``WeightsIntegrityError`` naming the file that is missing or altered.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise WeightsIntegrityError(f"no {MANIFEST} in {folder}")
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise WeightsIntegrityError(f"unreadable manifest {path}: {err}") from err
    for rel, expected in files.items():
        target = folder / rel
        if not target.is_file():
            raise WeightsIntegrityError(f"{target} is listed in {path} but missing")
        actual = sha256_file(target)
        if actual != expected:
            raise WeightsIntegrityError(
                f"{target} does not match its manifest (sha256 {actual[:12]}... expected "
                f"{expected[:12]}...): the file was altered or truncated; restore it from the repo"
            )
    return manifest
