"""Build an attacked dataset: clean folder -> ``OUT/attacked/<attack>/<name>.png`` + references.

Usage::

    python scripts/make_dataset.py OUT [--input DIR | --data ROOT] [--attacks fgsm,ifgsm]
        [--metric-checkpoint p1q2.pth] [--seed 0] [--device cpu] [--limit N] [--crop N]

Every clean image ``<name>.<ext>`` gives ``OUT/reference/<name>.png`` and one
``OUT/attacked/<attack>/<name>.png`` per attack (lossless PNG, atomic writes). Finished
files are skipped, so an interrupted run resumes where it stopped; each (attack, image)
job has its own seed, so a resumed run writes what an uninterrupted one would have.
``OUT/attacks.json`` records the metric, seed, crop and each attack's hyper-parameters;
a rerun with different settings is refused. Images are processed one at a time.

Data-parallel: started N times by ``accelerate launch --multi_gpu --num_processes N`` (or
``torchrun --nproc_per_node N``), each process attacks its own shard of the images (balanced
by pixel count); the files are those of a single-process run, since every job's seed depends
only on the run seed, the attack and the image name. One progress bar and one summary.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from PIL import Image
from tqdm import tqdm

from attacks.registry import ATTACKS, make_attack
from attacks.uap import metric_tag
from common.atomic_write import write_text_atomic
from common.cli_options import device_name
from common.data_parallel import (
    gather_objects,
    process_device,
    process_group,
    take_shard,
)
from common.image_io import centre_crop, list_images, load_image, save_image
from common.paths import default_data_dir
from common.seeds import name_seed

logger = logging.getLogger("make_dataset")

SETTINGS_FILE = "attacks.json"


@dataclass
class DatasetSummary:
    """What one run did: files written and skipped, and the mean score gain per attack."""

    written: int = 0
    skipped: int = 0
    references: int = 0
    gains: dict[str, list[float]] = field(default_factory=dict)

    def mean_gains(self) -> dict[str, float]:
        return {k: sum(v) / len(v) for k, v in self.gains.items() if v}

    @classmethod
    def merged(cls, parts: Sequence[DatasetSummary]) -> DatasetSummary:
        """The summary of several processes' runs (gains concatenated in process order)."""
        total = cls()
        for part in parts:
            total.written += part.written
            total.skipped += part.skipped
            total.references += part.references
            for name, gains in part.gains.items():
                total.gains.setdefault(name, []).extend(gains)
        return total


def parse_attacks(spec: str | Sequence[str] | None) -> list[str]:
    """``"a,b"`` or a list -> validated attack names; None -> every registered attack."""
    if spec is None:
        return list(ATTACKS)
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    unknown = [n for n in names if n not in ATTACKS]
    if unknown or not names:
        raise ValueError(f"unknown or no attacks {unknown}; known: {', '.join(ATTACKS)}")
    return list(dict.fromkeys(names))


def select_images(input_dir: str | Path, limit: int | None) -> list[Path]:
    """The first ``limit`` images of ``input_dir`` (sorted, top level only: the competition
    layout is flat; images in sub-folders are counted in a warning); base names must be
    unique."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    top = list_images(input_dir)
    nested = len(list_images(input_dir, recursive=True)) - len(top)
    if nested:
        logger.warning("%d image(s) in sub-folders of %s are not used", nested, input_dir)
    paths = top[:limit]
    if not paths:
        raise ValueError(f"no images in {input_dir}")
    stems: dict[str, Path] = {}
    for p in paths:
        if p.stem in stems:
            raise ValueError(f"{p.name} and {stems[p.stem].name} would both be {p.stem}.png")
        stems[p.stem] = p
    return paths


def cropped_pixels(path: Path, crop: int | None) -> int:
    """Pixels of ``path`` after ``centre_crop`` (from the header; 0 if unreadable): the
    relative cost of attacking it, used to balance the shards of a data-parallel run."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (OSError, ValueError):
        return 0
    return (height if crop is None else min(height, crop)) * (
        width if crop is None else min(width, crop)
    )


def record_settings(out_dir: Path, settings: dict[str, Any], write: bool = True) -> None:
    """Merge ``settings`` into ``OUT/attacks.json``; refuse if they contradict it. ``write=False``
    only checks (the other processes of a data-parallel run: the main one writes)."""
    path = out_dir / SETTINGS_FILE
    old: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    for key in ("metric", "seed", "crop"):
        if key in old and old[key] != settings[key]:
            raise ValueError(
                f"{out_dir} was made with {key}={old[key]!r}, this run has {settings[key]!r}: "
                "use another output folder"
            )
    attacks = dict(old.get("attacks", {}))
    for name, desc in settings["attacks"].items():
        if name in attacks and attacks[name] != desc:
            raise ValueError(
                f"{out_dir}/attacked/{name} was made by {attacks[name]}, this run has {desc}: "
                "use another output folder"
            )
        attacks[name] = desc
    if write:
        write_text_atomic(
            json.dumps({**old, **settings, "attacks": attacks}, indent=2) + "\n", path
        )


def make_dataset(
    input_dir: str | Path,
    out_dir: str | Path,
    metric: Callable[[torch.Tensor], torch.Tensor],
    *,
    attacks: str | Sequence[str] | None = None,
    seed: int = 0,
    limit: int | None = None,
    crop: int | None = None,
    device: str | torch.device = "cpu",
    overrides: dict[str, dict[str, Any]] | None = None,
    progress: bool = True,
    state: PartialState | None = None,
) -> DatasetSummary:
    """Attack every image of ``input_dir`` with every named attack against ``metric``.

    ``metric``: ``(B, 3, H, W)`` in [0, 1] -> ``(B, 1)`` on ``device``. ``overrides``
    maps an attack name to constructor options. In a data-parallel run (``state`` of several
    processes, default ``PartialState()``) this process attacks its shard of the images and
    the main one shows progress. Returns what was written and skipped by all processes.
    """
    if crop is not None and crop < 1:
        raise ValueError(f"crop must be >= 1, got {crop}")
    names = parse_attacks(attacks)
    paths = select_images(input_dir, limit)
    out_dir = Path(out_dir)
    overrides = overrides or {}
    try:
        built = {n: make_attack(n, metric, **overrides.get(n, {})) for n in names}
    except FileNotFoundError as err:
        raise ValueError(f"{err} (or leave uap out of the attacks)") from err
    state = state if state is not None else PartialState()
    out_dir.mkdir(parents=True, exist_ok=True)
    record_settings(
        out_dir,
        {
            "metric": metric_tag(metric) or type(metric).__name__,
            "seed": seed,
            "crop": crop,
            "attacks": {n: repr(a) for n, a in built.items()},
        },
        write=state.is_main_process,
    )
    if state.num_processes > 1:
        costs = [cropped_pixels(p, crop) for p in paths]
        paths = take_shard(paths, state.process_index, state.num_processes, costs)
    device = torch.device(device)
    summary = DatasetSummary(gains={n: [] for n in names})
    show = progress and state.is_main_process
    desc = (
        "attacks" if state.num_processes == 1 else f"attacks (process 0 of {state.num_processes})"
    )
    bar = tqdm(total=len(paths) * len(names), desc=desc, unit="img", disable=not show)
    with bar:
        for path in paths:
            name = path.stem
            reference = out_dir / "reference" / f"{name}.png"
            targets = {n: out_dir / "attacked" / n / f"{name}.png" for n in names}
            todo = [n for n in names if not targets[n].is_file()]
            summary.skipped += len(names) - len(todo)
            bar.update(len(names) - len(todo))
            if not todo and reference.is_file():
                continue
            clean = centre_crop(load_image(path), crop)
            if not reference.is_file():
                save_image(clean, reference)
                summary.references += 1
            if not todo:
                continue
            images = clean.unsqueeze(0).to(device)
            with torch.no_grad():
                clean_score = float(metric(images).reshape(-1)[0])
            for attack_name in todo:
                bar.set_postfix_str(f"{attack_name} {name}")
                generator = torch.Generator(device=device)
                generator.manual_seed(name_seed(seed, f"{attack_name}/{name}"))
                adv = built[attack_name](images, generator)
                save_image(adv[0], targets[attack_name])
                with torch.no_grad():
                    gain = float(metric(adv).reshape(-1)[0]) - clean_score
                summary.gains[attack_name].append(gain)
                summary.written += 1
                bar.update(1)
    summary = DatasetSummary.merged(gather_objects(state, summary))
    if not state.is_main_process:
        return summary
    for attack_name, gain in summary.mean_gains().items():
        logger.info(
            "%s: mean score gain %+.3f on %d new images",
            attack_name,
            gain,
            len(summary.gains[attack_name]),
        )
    return summary


def load_metric(device: str, checkpoint: str | None) -> torch.nn.Module:
    """``MetricModel`` from ``checkpoint`` (default: p1q2.pth beside model.py, else stand-in)."""
    from model import MetricModel

    return MetricModel(device, model_path=checkpoint)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="output folder (created; reused to resume)")
    parser.add_argument(
        "--input", type=Path, default=None, help="folder of clean images (default: DATA/clean/eval)"
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="data root (default: $PURIFY_DATA or ../shared/data)",
    )
    parser.add_argument(
        "--attacks",
        default=None,
        help=f"comma-separated subset of: {','.join(ATTACKS)} (default: all)",
    )
    parser.add_argument(
        "--metric-checkpoint",
        default=None,
        help="Linearity checkpoint (default: p1q2.pth beside model.py, else the stand-in metric)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", type=device_name, default="cpu")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--crop", type=int, default=None, help="centre crop to N x N pixels")
    return parser


def main(argv: Sequence[str] | None = None) -> DatasetSummary:
    args = build_parser().parse_args(argv)
    with process_group(args.device) as state:
        level = logging.INFO if state.is_main_process else logging.WARNING
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
        input_dir = args.input or (args.data or default_data_dir()) / "clean" / "eval"
        device = process_device(state, args.device)
        metric = load_metric(str(device), args.metric_checkpoint)
        summary = make_dataset(
            input_dir,
            args.out,
            metric,
            attacks=args.attacks,
            seed=args.seed,
            limit=args.limit,
            crop=args.crop,
            device=device,
            state=state,
        )
        if state.is_main_process:
            print(
                f"wrote {summary.written} attacked images and {summary.references} references, "
                f"skipped {summary.skipped} finished ones -> {args.out}"
            )
    return summary

