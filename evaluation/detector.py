"""How the perturbation detector sees a dataset: its strength estimates and the share of
images each gate would send to purification.

For datasets in the competition layout (``DIR/reference/<img>``, ``DIR/attacked/<attack>/<img>``)
each attack and the references are one group; ``--clean DIR`` adds a folder of natural photos
(for example CLIVE's test split, to count false alarms on photos the detector never saw).
Prints a Markdown table (median and 90th percentile of the estimate, share flagged at each
gate, and for attacked images the median true strength: the RMS of attacked minus reference,
in 1/255 as the estimate) and writes it with the raw values to ``--output`` as JSON.

    python scripts/eval_detector.py --datasets runs/public-set runs/transfer-set \\
        --clean /work/shared/data/clive/images --gates 0.5 1 1.5
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from common.cli_options import positive_int, report_file
from common.image_io import ImageReadError, list_folders, list_images, load_image
from common.paths import WEIGHTS_DIR
from purifier import PerturbationDetector, load_detector, newest_detector

logger = logging.getLogger("eval_detector")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--detector", type=Path, default=None, help="default: newest detector-v*")
    p.add_argument("--datasets", type=Path, nargs="*", default=[], help="competition layout")
    p.add_argument("--clean", type=Path, nargs="*", default=[], help="folders of natural photos")
    p.add_argument("--limit", type=positive_int, default=None, help="at most N images per group")
    p.add_argument("--gates", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0])
    p.add_argument(
        "--output", type=report_file, default=None, help="JSON with the table and estimates"
    )
    p.add_argument("--threads", type=positive_int, default=1)
    args = p.parse_args(argv)
    if not args.datasets and not args.clean:
        p.error("give --datasets and/or --clean")
    if any(g < 0 for g in args.gates):
        p.error("--gates must be >= 0")
    return args


def groups_with_references(args: argparse.Namespace) -> dict[str, tuple[list[Path], Path | None]]:
    """Group name (``<dataset>: reference``, ``<dataset>: <attack>``, ``<folder> (natural)``)
    -> (image paths, the dataset's ``reference`` folder for attacked groups, else None)."""
    groups: dict[str, tuple[list[Path], Path | None]] = {}
    for dataset in args.datasets:
        if not dataset.is_dir():
            raise SystemExit(f"{dataset} does not exist (build it with scripts/make_dataset.py)")
        if not (dataset / "reference").is_dir():
            raise SystemExit(f"{dataset} has no reference/ folder (competition layout)")
        references = dataset / "reference"
        groups[f"{dataset.name}: reference"] = (list_images(references), None)
        for attack in list_folders(dataset / "attacked"):
            groups[f"{dataset.name}: {attack.name}"] = (list_images(attack), references)
    for folder in args.clean:
        groups[f"{folder.name} (natural)"] = (list_images(folder, recursive=True), None)
    if args.limit:
        groups = {name: (paths[: args.limit], ref) for name, (paths, ref) in groups.items()}
    return groups


def true_strength(image: torch.Tensor, reference_path: Path) -> float | None:
    """RMS of ``image - reference`` in 1/255 units (``image`` ``(3, H, W)`` in [0, 1]); None
    when the reference is missing, unreadable or of another size."""
    try:
        reference = load_image(reference_path)
    except (ImageReadError, FileNotFoundError):
        return None
    if reference.shape != image.shape:
        return None
    return float((image - reference).square().mean().sqrt()) * 255


@torch.no_grad()
def estimate_paths(
    detector: PerturbationDetector, paths: list[Path], desc: str, references: Path | None = None
) -> tuple[list[float], list[float]]:
    """One strength estimate (1/255) per readable image, unreadable ones skipped; and, with a
    ``references`` folder, the true strength of each image that has a same-named reference."""
    values, truths = [], []
    for path in tqdm(paths, desc=desc, leave=False):
        try:
            image = load_image(path)
        except ImageReadError as err:
            logger.warning("skipped %s", err)
            continue
        values.append(float(detector.estimate(image[None])[0]))
        truth = None if references is None else true_strength(image, references / path.name)
        if truth is not None:
            truths.append(truth)
    return values, truths


def summarize(values: torch.Tensor, gates: Sequence[float]) -> dict[str, Any]:
    """``n``, ``median`` (torch's: the lower middle), ``p90`` and ``flagged`` (gate -> share
    of ``values`` at or over it) of a non-empty 1-D tensor of estimates."""
    return {
        "n": len(values),
        "median": float(values.median()),
        "p90": float(values.quantile(0.9)),
        "flagged": {g: float((values >= g).float().mean()) for g in gates},
    }


def table(
    estimates: dict[str, list[float]],
    gates: list[float],
    truths: dict[str, list[float]] | None = None,
) -> str:
    """Markdown table: group, images, median, p90, share flagged at each gate, and the median
    of the group's true strengths (``truths``; "–" where a group has none)."""
    truths = truths or {}
    gate_heads = " | ".join(f"≥ {g:g}" for g in gates)
    head = f"| group | images | median | p90 | {gate_heads} | true strength (median) |"
    lines = [head, "|" + "---|" * (5 + len(gates))]
    for name, values in estimates.items():
        if not values:
            continue
        row = summarize(torch.tensor(values), gates)
        shares = " | ".join(f"{share:.2f}" for share in row["flagged"].values())
        known = truths.get(name)
        truth = f"{float(torch.tensor(known).median()):.2f}" if known else "–"
        lines.append(
            f"| {name} | {row['n']} | {row['median']:.2f} | {row['p90']:.2f} | {shares} | {truth} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    folder = args.detector or newest_detector(WEIGHTS_DIR)
    detector = load_detector(folder)
    started = time.perf_counter()
    estimates, truths = {}, {}
    for name, (paths, references) in groups_with_references(args).items():
        estimates[name], truths[name] = estimate_paths(detector, paths, name, references)
    text = table(estimates, args.gates, truths)
    print(f"detector {folder}; {time.perf_counter() - started:.0f} s\n\n{text}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        record = {"detector": str(folder), "gates": args.gates, "table": text}
        raw = {"estimates": estimates, "true_strengths": {k: v for k, v in truths.items() if v}}
        args.output.write_text(json.dumps({**record, **raw}, indent=1) + "\n")
    return 0

