"""Plan the purification of a folder: which file goes where, what is skipped, what is batched.

Rules: the input folder is walked recursively for ``common.image_io.IMAGE_EXTENSIONS`` files (hidden
files, such as the ``.part`` temp files of an interrupted write, and everything in hidden
folders, such as ``.ipynb_checkpoints``, are ignored); each output keeps its relative path and
name, with suffix ``.png`` unless the format is kept. The output folder
may not be the input folder or lie inside it, no output may land on an input file or (through
a symlink) inside the input folder, two inputs may not map to one output (the first in sorted
order wins), and existing outputs are skipped unless overwriting (so an interrupted run
resumes). Each job carries its source's path relative to the input folder (``Job.key``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from common.image_io import DECODE_ERRORS, IMAGE_EXTENSIONS, list_files, list_images

DEFAULT_SUFFIX = ".png"


@dataclass(frozen=True)
class Job:
    """Purify ``source`` into ``target``; ``key`` is ``source`` relative to the input folder
    (POSIX), stable across runs and machines."""

    source: Path
    target: Path
    key: str


@dataclass
class FolderPlan:
    """``jobs`` to run; ``existing`` skipped (output present); ``rejected`` (job, reason) never
    run; ``ignored`` files without an image extension."""

    jobs: list[Job] = field(default_factory=list)
    existing: list[Job] = field(default_factory=list)
    rejected: list[tuple[Job, str]] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)


def check_folders(in_dir: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """Resolved ``(in_dir, out_dir)``; ValueError if ``in_dir`` is not a folder or ``out_dir``
    is ``in_dir`` or inside it (outputs would be taken as inputs by the next run)."""
    source, target = Path(in_dir).resolve(), Path(out_dir).resolve()
    if not source.is_dir():
        raise ValueError(f"input folder {in_dir} does not exist or is not a folder")
    if target == source:
        raise ValueError(f"the output folder must differ from the input folder ({source})")
    if target.is_relative_to(source):
        raise ValueError(
            f"the output folder {target} lies inside the input folder {source}: "
            "choose a folder outside it"
        )
    if target.exists() and not target.is_dir():
        raise ValueError(f"output path {target} exists and is not a folder")
    return source, target


def output_path(source: Path, in_dir: Path, out_dir: Path, keep_format: bool) -> Path:
    """Where ``source`` (a file under ``in_dir``) is written under ``out_dir``."""
    relative = source.relative_to(in_dir)
    return out_dir / (relative if keep_format else relative.with_suffix(DEFAULT_SUFFIX))


def plan_folder(
    in_dir: str | Path, out_dir: str | Path, keep_format: bool = False, overwrite: bool = False
) -> FolderPlan:
    """The plan for purifying ``in_dir`` into ``out_dir`` (see the module docstring)."""
    in_dir, out_dir = check_folders(in_dir, out_dir)
    # Named by where they sit in in_dir (a symlink may point outside it); compared resolved.
    sources = list_images(in_dir, recursive=True)
    inputs = {p.resolve() for p in sources}
    plan = FolderPlan(ignored=_non_images(in_dir))
    claimed: dict[Path, Path] = {}
    for source in sources:
        key = source.relative_to(in_dir).as_posix()
        job = Job(source, output_path(source, in_dir, out_dir, keep_format), key)
        written_to = job.target.resolve()
        if written_to in inputs:
            plan.rejected.append((job, f"its output {job.target} is an input file"))
        elif written_to.is_relative_to(in_dir):
            plan.rejected.append((job, f"its output {job.target} lies inside the input folder"))
        elif job.target in claimed:
            plan.rejected.append((job, f"{claimed[job.target]} already writes {job.target}"))
        else:
            claimed[job.target] = source
            if job.target.exists() and not overwrite:
                plan.existing.append(job)
            else:
                plan.jobs.append(job)
    return plan


def image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` from the file header; ``ValueError`` if it is not a readable image."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except DECODE_ERRORS as err:
        raise ValueError(f"cannot read image {path}: {err}") from err
    return height, width


def pixel_counts(jobs: Iterable[Job]) -> list[int]:
    """Pixels (height x width, from the header) of each job's source, 0 if unreadable: the
    relative cost of purifying it, used to balance the shards of a data-parallel run."""
    counts = []
    for job in jobs:
        try:
            height, width = image_size(job.source)
        except ValueError:
            height, width = 0, 0
        counts.append(height * width)
    return counts


def batches_by_size(
    jobs: Iterable[Job], batch_size: int
) -> tuple[list[list[Job]], list[tuple[Job, str]]]:
    """``(batches, unreadable)``: jobs grouped by image size (order of first appearance kept),
    split into batches of at most ``batch_size``; ``unreadable`` (job, reason) for files whose
    header cannot be read."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[tuple[int, int], list[Job]] = {}
    unreadable: list[tuple[Job, str]] = []
    for job in jobs:
        try:
            groups.setdefault(image_size(job.source), []).append(job)
        except ValueError as err:
            unreadable.append((job, str(err)))
    batches = [
        group[i : i + batch_size]
        for group in groups.values()
        for i in range(0, len(group), batch_size)
    ]
    return batches, unreadable


def _non_images(folder: Path) -> list[Path]:
    files = list_files(folder, recursive=True)
    return sorted(p for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS)
