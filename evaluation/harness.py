"""Score a defense of the Linearity metric the way the MSU competition harness does.

Layout: ``DATA_DIR/attacked/<attack>/<image>`` and ``DATA_DIR/reference/<image>`` (same file
name). Each attacked image goes through the defense under ``torch.no_grad()``; then, with f the
metric applied to the defended output as returned:

- Quality = (SSIM + PSNR / 80) / 2 between reference and defended image (scikit-image,
  ``data_range=1``, HxWx3 float32). Only here, and only when sizes differ, the defended image
  is resized to the reference size (bilinear, antialiased).
- Gain = |f(ref) - f(def)| / f(ref) * 100 (signed denominator, as in the competition).
- SRCC = Spearman correlation of f(ref) and f(def) over the images of one attack.

Deliberate departures from the competition script:

- PSNR is capped at ``PSNR_CAP_DB`` = 80 dB. The competition keeps +inf for identical images,
  which makes every mean infinite; with the cap an untouched image has Quality 1.
- Images of different sizes are batched by size (the competition's loader cannot stack them).
- Each reference image is scored once, however many attacked copies it has.
- ``scores.csv`` keeps the attack name (column ``Attack``) and adds ``Time per image (s)``,
  the defense's wall time per image. NaN is written as ``null`` in ``scores.json``.

As in the competition (pandas), averages skip NaN; ``All Attacks`` averages over all images
except SRCC, which averages the per-attack SRCCs (NaN for an attack with fewer than two images
or constant scores). This file is not installed as a module (``test`` would shadow the
standard library's package): run it as a script, or load it by path.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image
from scipy.stats import ConstantInputWarning, spearmanr
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity
from tqdm import tqdm

from common.image_checks import check_images
from common.image_io import DECODE_ERRORS, ImageReadError, list_folders, list_images, load_image
from defenses.registry import DEFAULT_DEFENSE, DEFENSES, PurifyingDefense, make_defense
from metrics.linearity import CHECKPOINT_NAME
from model import MetricModel

logger = logging.getLogger("test")

PSNR_CAP_DB = 80.0
ALL_ATTACKS = "All Attacks"
# Output column -> ImageRecord field averaged into it (SRCC is computed, not averaged).
AVERAGED_COLUMNS = {
    "Quality Score": "quality",
    "Gain Score": "gain",
    "Source Linearity": "source_score",
    "Defense Linearity": "defense_score",
    "Attacked Linearity": "attacked_score",
    "PSNR": "psnr",
    "SSIM": "ssim",
}
TIME_COLUMN = "Time per image (s)"
COLUMNS = ("Attack", *AVERAGED_COLUMNS, "SRCC", TIME_COLUMN)
# How the competition ranks a defense: its difference from the baseline on each of these,
# signed so that positive is better (Gain is lower-better, so it is baseline - defense).
BASELINE_DIFFERENCES = {
    "Gain vs baseline": ("Gain Score", -1.0),
    "Quality vs baseline": ("Quality Score", 1.0),
    "SRCC vs baseline": ("SRCC", 1.0),
}
COMPARISON_COLUMNS = ("Attack", *BASELINE_DIFFERENCES)

Metric = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ImagePair:
    """One attacked image and its clean reference."""

    attack: str
    attacked: Path
    reference: Path


@dataclass(frozen=True)
class ImageRecord:
    """Scores of one defended image (metric scores are f(ref), f(def), f(attacked))."""

    attack: str
    name: str
    source_score: float
    defense_score: float
    attacked_score: float
    psnr: float
    ssim: float
    quality: float
    gain: float
    seconds: float


def collect_pairs(data_dir: str | Path) -> list[ImagePair]:
    """Pair every ``attacked/<attack>/<image>`` with ``reference/<image>``, sorted by attack, name.

    Raises ``ValueError`` naming the offending path when ``data_dir`` or one of its two
    folders is missing, an attack folder holds no image, images sit directly in ``attacked/``,
    or a reference is missing.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"data folder {data_dir} does not exist or is not a folder")
    attacked_dir, reference_dir = data_dir / "attacked", data_dir / "reference"
    for folder in (attacked_dir, reference_dir):
        if not folder.is_dir():
            raise ValueError(
                f"{folder} is not a folder: expected {data_dir}/attacked/<attack>/<image> "
                f"and {data_dir}/reference/<image>"
            )
    loose = list_images(attacked_dir)
    if loose:
        raise ValueError(
            f"{loose[0]} sits directly in {attacked_dir}: put attacked images in "
            "attacked/<attack_name>/"
        )
    attack_dirs = list_folders(attacked_dir)
    if not attack_dirs:
        raise ValueError(f"{attacked_dir} holds no attack folder (attacked/<attack_name>/)")
    pairs = []
    for attack_dir in attack_dirs:
        images = list_images(attack_dir)
        if not images:
            raise ValueError(f"attack folder {attack_dir} holds no image")
        for image in images:
            reference = reference_dir / image.name
            if not reference.is_file():
                raise ValueError(f"no reference for {image}: expected {reference}")
            pairs.append(ImagePair(attack_dir.name, image, reference))
    return pairs


def quality_score(psnr: float, ssim: float) -> float:
    """Competition quality: ``(SSIM + PSNR / 80) / 2``."""
    return (ssim + psnr / 80.0) / 2.0


def gain_score(source_score: float, defense_score: float) -> float:
    """Competition gain in percent: ``|f(ref) - f(def)| / f(ref) * 100`` (inf/NaN if f(ref)=0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        source = np.float64(source_score)
        return float(np.abs(source - defense_score) / source * 100.0)


def psnr_ssim(reference: np.ndarray, defended: np.ndarray) -> tuple[float, float]:
    """PSNR (dB, capped at ``PSNR_CAP_DB``) and SSIM of two HxWx3 float images in [0, 1]."""
    if mean_squared_error(reference, defended) == 0:
        psnr = PSNR_CAP_DB
    else:
        psnr = min(PSNR_CAP_DB, float(peak_signal_noise_ratio(reference, defended, data_range=1)))
    ssim = float(structural_similarity(reference, defended, channel_axis=2, data_range=1))
    return psnr, ssim


def resized_to(images: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Float ``(B, 3, H, W)`` resized to ``size`` (bilinear, antialiased) if it differs, as
    the competition does before PSNR/SSIM; returned unchanged otherwise."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(
        images.float(), size=tuple(size), mode="bilinear", align_corners=False, antialias=True
    )


def fidelity(reference: torch.Tensor, defended: torch.Tensor) -> list[tuple[float, float]]:
    """``(PSNR, SSIM)`` per image of ``(B, 3, H, W)`` batches in [0, 1].

    ``defended`` is resized to the reference size (bilinear, antialiased) if it differs.
    """
    defended = resized_to(defended.detach().float(), reference.shape[-2:])
    ref_np = rearrange(reference.detach().float().cpu(), "b c h w -> b h w c").numpy()
    def_np = rearrange(defended.cpu(), "b c h w -> b h w c").numpy()
    return [psnr_ssim(r, d) for r, d in zip(ref_np, def_np, strict=True)]


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image file, read from its header."""
    try:
        with Image.open(path) as img:
            return img.size
    except DECODE_ERRORS as err:
        raise ImageReadError(f"cannot read image {path}: {err}") from err


def size_batches(pairs: Sequence[ImagePair], batch_size: int) -> list[list[int]]:
    """Indices of ``pairs`` in batches of at most ``batch_size`` whose images share sizes."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, pair in enumerate(pairs):
        groups[(image_size(pair.attacked), image_size(pair.reference))].append(i)
    return [
        indices[start : start + batch_size]
        for indices in groups.values()
        for start in range(0, len(indices), batch_size)
    ]


def _metric_scores(metric: Metric, images: torch.Tensor, what: str) -> list[float]:
    scores = metric(images)
    if not isinstance(scores, torch.Tensor) or scores.numel() != images.shape[0]:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"metric must return one score per image for {what}, got {shape}")
    return scores.detach().double().reshape(-1).cpu().tolist()


def _check_defended(defended: torch.Tensor, attacked: torch.Tensor, names: list[str]) -> None:
    try:
        check_images(defended, "defended images")
    except ValueError as err:
        raise ValueError(f"the defense returned invalid output for {names}: {err}") from err
    if defended.shape[0] != attacked.shape[0]:
        raise ValueError(
            f"the defense returned {defended.shape[0]} images for a batch of "
            f"{attacked.shape[0]} ({names})"
        )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate(
    pairs: Sequence[ImagePair],
    defense: PurifyingDefense,
    metric: Metric,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    progress: bool = True,
) -> list[ImageRecord]:
    """Defend every attacked image and score it; one record per pair, in the order of ``pairs``.

    ``metric`` maps float ``(B, 3, H, W)`` in [0, 1] to ``B`` scores (higher is better).
    Images are decoded by ``max(1, num_workers)`` threads and batched by size.
    """
    if not pairs:
        raise ValueError("no image pairs to evaluate")
    device = torch.device(device)
    batches = size_batches(pairs, batch_size)
    reference_scores: dict[Path, float] = {}
    records: dict[int, ImageRecord] = {}
    with (
        ThreadPoolExecutor(max(1, num_workers)) as pool,
        torch.no_grad(),
        tqdm(total=len(pairs), unit="img", disable=not progress) as bar,
    ):
        for indices in batches:
            batch = [pairs[i] for i in indices]
            attacked = torch.stack(list(pool.map(load_image, [p.attacked for p in batch])))
            reference = torch.stack(list(pool.map(load_image, [p.reference for p in batch])))
            batch_records = _evaluate_batch(
                batch, attacked.to(device), reference.to(device), defense, metric, reference_scores
            )
            records.update(zip(indices, batch_records, strict=True))
            bar.update(len(batch))
    return [records[i] for i in range(len(pairs))]


def _evaluate_batch(
    batch: list[ImagePair],
    attacked: torch.Tensor,
    reference: torch.Tensor,
    defense: PurifyingDefense,
    metric: Metric,
    reference_scores: dict[Path, float],
) -> list[ImageRecord]:
    names = [str(p.attacked) for p in batch]
    start = perf_counter()
    defended = defense.apply_defense(attacked.clone())
    _synchronize(attacked.device)
    seconds = (perf_counter() - start) / len(batch)
    _check_defended(defended, attacked, names)

    defense_scores = _metric_scores(metric, defended, "defended images")
    attacked_scores = _metric_scores(metric, attacked, "attacked images")
    unscored = [i for i, p in enumerate(batch) if p.reference not in reference_scores]
    unscored = list({batch[i].reference: i for i in unscored}.values())
    if unscored:
        new_scores = _metric_scores(metric, reference[unscored], "reference images")
        for i, score in zip(unscored, new_scores, strict=True):
            reference_scores[batch[i].reference] = score

    try:
        psnr_ssim_pairs = fidelity(reference, defended)
    except ValueError as err:
        raise ValueError(f"cannot compute PSNR/SSIM for {names}: {err}") from err
    records = []
    for i, (psnr, ssim) in enumerate(psnr_ssim_pairs):
        source = reference_scores[batch[i].reference]
        records.append(
            ImageRecord(
                attack=batch[i].attack,
                name=batch[i].attacked.name,
                source_score=source,
                defense_score=defense_scores[i],
                attacked_score=attacked_scores[i],
                psnr=psnr,
                ssim=ssim,
                quality=quality_score(psnr, ssim),
                gain=gain_score(source, defense_scores[i]),
                seconds=seconds,
            )
        )
    return records


def nan_mean(values: Sequence[float]) -> float:
    """Mean that skips NaN (as pandas does); NaN if nothing is left."""
    array = np.asarray(values, dtype=np.float64)
    array = array[~np.isnan(array)]
    return float(array.mean()) if array.size else math.nan


def srcc(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman correlation; NaN for fewer than two points or a constant input."""
    if len(x) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        return float(spearmanr(x, y).statistic)


def aggregate(records: Sequence[ImageRecord]) -> list[dict[str, str | float]]:
    """One row per attack (sorted by name) plus ``All Attacks``, with the keys of ``COLUMNS``."""
    if not records:
        raise ValueError("no records to aggregate")
    by_attack: dict[str, list[ImageRecord]] = defaultdict(list)
    for record in records:
        by_attack[record.attack].append(record)
    rows = []
    for attack in sorted(by_attack):
        group = by_attack[attack]
        row = _mean_row(attack, group)
        row["SRCC"] = srcc([r.source_score for r in group], [r.defense_score for r in group])
        rows.append(row)
    total = _mean_row(ALL_ATTACKS, records)
    total["SRCC"] = nan_mean([row["SRCC"] for row in rows])  # type: ignore[misc]
    rows.append(total)
    return [{column: row[column] for column in COLUMNS} for row in rows]


def baseline_differences(
    rows: Sequence[dict[str, str | float]], baseline_rows: Sequence[dict[str, str | float]]
) -> list[dict[str, str | float]]:
    """Per attack of ``rows`` (``aggregate`` output): Gain, Quality and SRCC minus the
    baseline's, signed so that positive is better (``BASELINE_DIFFERENCES``); NaN where the
    baseline has no row for the attack."""
    by_attack = {row["Attack"]: row for row in baseline_rows}
    out = []
    for row in rows:
        base = by_attack.get(row["Attack"])
        diff: dict[str, str | float] = {"Attack": row["Attack"]}
        for column, (key, sign) in BASELINE_DIFFERENCES.items():
            diff[column] = math.nan if base is None else sign * (row[key] - base[key])  # type: ignore[operator]
        out.append(diff)
    return out


def _mean_row(attack: str, records: Sequence[ImageRecord]) -> dict[str, str | float]:
    row: dict[str, str | float] = {"Attack": attack}
    for column, field in AVERAGED_COLUMNS.items():
        row[column] = nan_mean([getattr(r, field) for r in records])
    row[TIME_COLUMN] = nan_mean([r.seconds for r in records])
    return row


def write_scores(
    rows: Sequence[dict[str, str | float]], output_dir: str | Path, level: str
) -> Path:
    """Write ``scores.csv`` (``level='full'``: every row) or ``scores.json`` (``'simple'``).

    The JSON holds the ``All Attacks`` figures without the ``Attack`` key, NaN as null.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if level == "full":
        path = _write_csv(output_dir / "scores.csv", rows, COLUMNS)
    elif level == "simple":
        path = output_dir / "scores.json"
        total = next(row for row in rows if row["Attack"] == ALL_ATTACKS)
        data = {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in total.items()
            if k != "Attack"
        }
        path.write_text(json.dumps(data, indent=2) + "\n")
    else:
        raise ValueError(f"score_detail_level must be 'full' or 'simple', got {level!r}")
    return path


def format_table(rows: Sequence[dict[str, str | float]], columns: Sequence[str] = COLUMNS) -> str:
    """Plain-text table of ``rows`` (floats with 4 decimals)."""
    cells = [list(columns)] + [
        [v if isinstance(v, str) else f"{v:.4f}" for v in (row[c] for c in columns)] for row in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = []
    for line in cells:
        padded = [line[0].ljust(widths[0])]
        padded += [cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)]
        lines.append("  ".join(padded))
    return "\n".join(lines)


def write_comparison(
    rows: Sequence[dict[str, str | float]], output_dir: str | Path, baseline: str
) -> Path:
    """``comparison_to_<baseline>.csv``: the ``baseline_differences`` rows."""
    path = Path(output_dir) / f"comparison_to_{baseline}.csv"
    return _write_csv(path, rows, COMPARISON_COLUMNS)


def _write_csv(path: Path, rows: Sequence[dict[str, str | float]], columns: Sequence[str]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def load_metric(checkpoint_dir: str | Path, device: torch.device) -> MetricModel:
    """``MetricModel`` from ``checkpoint_dir/p1q2.pth`` if present, else the default fallback."""
    path = Path(checkpoint_dir) / CHECKPOINT_NAME
    if path.is_file():
        return MetricModel(device, path).eval()
    logger.warning("%s not found: MetricModel falls back to its default checkpoint", path)
    try:
        return MetricModel(device).eval()
    except FileNotFoundError as err:
        raise ValueError(f"no {path}, and MetricModel's fallback failed: {err}") from err


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Score a defense of the Linearity metric (MSU competition harness).",
    )
    parser.add_argument("--data_dir", required=True, help="folder with attacked/ and reference/")
    parser.add_argument("--output_dir", required=True, help="where scores.csv/json are written")
    parser.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="device for the defense and the metric (default: cuda if available)",
    )
    parser.add_argument("--batch_size", type=int, default=8, help="images per batch")
    parser.add_argument("--num_workers", type=int, default=4, help="image-decoding threads")
    parser.add_argument(
        "--checkpoint_dir",
        default="./",
        help=f"folder with {CHECKPOINT_NAME} (else MetricModel's default, then the stand-in)",
    )
    parser.add_argument(
        "--score_detail_level",
        choices=["full", "simple"],
        default="full",
        help="full: scores.csv per attack; simple: scores.json with the All Attacks figures",
    )
    parser.add_argument(
        "--defense",
        choices=sorted(DEFENSES),
        default=DEFAULT_DEFENSE,
        help=f"registered defense to evaluate (default: {DEFAULT_DEFENSE}, i.e. defense.Defense)",
    )
    parser.add_argument(
        "--compare_to",
        choices=sorted(DEFENSES),
        default=None,
        help="also score this defense (e.g. resize, the competition's baseline) on the same "
        "images and write the differences that rank a defense: Gain, Quality and SRCC minus "
        "the baseline's, positive = better (comparison_to_<name>.csv)",
    )
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("test.py: error: --device cuda but CUDA is not available")
    if args.batch_size < 1 or args.num_workers < 0:
        raise SystemExit("test.py: error: --batch_size must be >= 1 and --num_workers >= 0")
    device = torch.device(args.device)
    try:  # before the evaluation, so an unusable folder does not waste a long run
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SystemExit(
            f"test.py: error: cannot use --output_dir {args.output_dir}: {err}"
        ) from err
    try:
        pairs = collect_pairs(args.data_dir)
        attacks = len({p.attack for p in pairs})
        logger.info("%d attacked images in %d attacks", len(pairs), attacks)
        metric = load_metric(args.checkpoint_dir, device)
        defense = make_defense(args.defense, device)
        logger.info("defense %s: %r", args.defense, defense)
        run = {"batch_size": args.batch_size, "device": device, "num_workers": args.num_workers}
        records = evaluate(pairs, defense, metric, **run, progress=not args.no_progress)
        baseline_records = None
        if args.compare_to is not None:
            baseline = make_defense(args.compare_to, device)
            logger.info("baseline %s: %r", args.compare_to, baseline)
            baseline_records = evaluate(
                pairs, baseline, metric, **run, progress=not args.no_progress
            )
    except ValueError as err:
        raise SystemExit(f"test.py: error: {err}") from err
    rows = aggregate(records)
    print(format_table(rows))
    path = write_scores(rows, args.output_dir, args.score_detail_level)
    print(f"wrote {path}")
    if baseline_records is not None:
        differences = baseline_differences(rows, aggregate(baseline_records))
        print(f"\n{args.defense} minus {args.compare_to} (positive = better):")
        print(format_table(differences, COMPARISON_COLUMNS))
        print(f"wrote {write_comparison(differences, args.output_dir, args.compare_to)}")
    return 0

