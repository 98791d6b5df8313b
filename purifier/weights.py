"""Find the denoiser weights a purifier loads: a given folder, or the newest released
``ddpm-v<N>`` folder (one holding a ``manifest.json``) under a weights directory.
``newest_folder`` does the search for any release name (the detector's ``detector-v<N>`` too)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from common.weights_manifest import MANIFEST

logger = logging.getLogger(__name__)

RELEASE_PATTERN = re.compile(r"ddpm-v(\d+(?:\.\d+)*)")
TRAIN_COMMAND = "python scripts/train_ddpm.py --output {folder}"


class MissingWeightsError(FileNotFoundError):
    """No usable denoiser weights folder."""


def release_version(
    folder: Path, pattern: re.Pattern[str] = RELEASE_PATTERN
) -> tuple[int, ...] | None:
    """``(1,)`` for ``ddpm-v1``, ``(2, 1)`` for ``ddpm-v2.1``; None for any other name.
    ``pattern``'s first group holds the dotted version."""
    match = pattern.fullmatch(folder.name)
    return tuple(int(part) for part in match.group(1).split(".")) if match else None


def newest_folder(weights_dir: str | Path, pattern: re.Pattern[str]) -> Path | None:
    """The released folder (name matching ``pattern``, holding ``manifest.json``) with the
    highest version in ``weights_dir``; None if there is none. Folders without a manifest
    (e.g. still being written) are ignored."""
    weights_dir = Path(weights_dir)
    releases = []
    if weights_dir.is_dir():
        for child in weights_dir.iterdir():
            version = release_version(child, pattern)
            if version is None or not child.is_dir():
                continue
            if not (child / MANIFEST).is_file():
                logger.debug("ignoring %s: no %s (not released)", child, MANIFEST)
                continue
            releases.append((version, child))
    return max(releases)[1] if releases else None


def newest_release(weights_dir: str | Path) -> Path:
    """The released ``ddpm-v<N>`` folder with the highest version in ``weights_dir``.

    Folders without ``manifest.json`` (e.g. still being written) are ignored. Raises
    ``MissingWeightsError`` naming the folder searched and the training command.
    """
    weights_dir = Path(weights_dir)
    newest = newest_folder(weights_dir, RELEASE_PATTERN)
    if newest is None:
        raise MissingWeightsError(
            f"no released denoiser weights (a ddpm-v<N> folder with {MANIFEST}) in "
            f"{weights_dir}. Train them with "
            f"`{TRAIN_COMMAND.format(folder=weights_dir / 'ddpm-v1')}`, "
            "or pass weights=<folder> (--weights on the command line)."
        )
    return newest


def resolve_weights(weights: str | Path | None, weights_dir: str | Path) -> Path:
    """``weights`` if given (it must be a folder), else ``newest_release(weights_dir)``."""
    if weights is None:
        return newest_release(weights_dir)
    folder = Path(weights)
    if not folder.is_dir():
        raise MissingWeightsError(
            f"denoiser weights folder {folder} does not exist. Train one with "
            f"`{TRAIN_COMMAND.format(folder=folder)}`."
        )
    return folder
