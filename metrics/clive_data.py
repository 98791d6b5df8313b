"""CLIVE labels and images for training and testing the stand-in metric.

``read_mos_csv`` reads ``clive/mos.csv`` (``image,mos,mos_std,split``); ``carve_validation``
takes a fixed, seeded subset of the *train* split for model selection (the ``test`` split is
only ever used for the final report).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch

SPLITS = ("train", "test")


@dataclass(frozen=True)
class MosRow:
    """One CLIVE image: file path, mean opinion score (higher = better), its std, split."""

    path: Path
    mos: float
    mos_std: float
    split: str


def clive_dir(data_dir: str | Path) -> Path:
    """``<data_dir>/clive``; ``FileNotFoundError`` if it has no ``mos.csv``."""
    folder = Path(data_dir) / "clive"
    if not (folder / "mos.csv").is_file():
        raise FileNotFoundError(
            f"no CLIVE labels at {folder / 'mos.csv'}; pass --data pointing at the folder that "
            "holds clive/ (or set $PURIFY_DATA)"
        )
    return folder


def read_mos_csv(data_dir: str | Path, split: str | None = None) -> list[MosRow]:
    """Rows of ``<data_dir>/clive/mos.csv`` (optionally one split), in file order."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    folder = clive_dir(data_dir)
    rows = []
    with open(folder / "mos.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"image", "mos", "mos_std", "split"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{folder / 'mos.csv'} lacks columns {sorted(missing)}")
        for rec in reader:
            if rec["split"] not in SPLITS:
                raise ValueError(f"{folder / 'mos.csv'}: unknown split {rec['split']!r}")
            if split is None or rec["split"] == split:
                rows.append(
                    MosRow(
                        folder / "images" / rec["image"],
                        float(rec["mos"]),
                        float(rec["mos_std"]),
                        rec["split"],
                    )
                )
    return rows


def carve_validation(
    rows: list[MosRow], fraction: float, seed: int = 0
) -> tuple[list[MosRow], list[MosRow]]:
    """Split train rows into ``(fit, val)`` with a seeded permutation of the sorted file names.

    The result depends only on the set of rows, ``fraction`` and ``seed``, not on row order.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    if any(r.split != "train" for r in rows):
        raise ValueError("validation is carved out of the train split only; got non-train rows")
    ordered = sorted(rows, key=lambda r: r.path.name)
    perm = torch.randperm(len(ordered), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, round(fraction * len(ordered)))
    val = [ordered[i] for i in perm[:n_val]]
    fit = [ordered[i] for i in perm[n_val:]]
    return fit, val
