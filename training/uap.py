"""Train the universal adversarial perturbation used by the ``uap`` attack.

Usage::

    python scripts/train_uap.py [--metric-checkpoint p1q2.pth] [--data ROOT] [--seed 0]
        [--epochs 5] [--batch-size 8] [--size 256] [--lr 0.001] [--device cpu] [--threads N]
        [--out DIR]

Trains on ``DATA/clean/train`` (never on ``clean/eval``) and writes
``weights/uap-<metric>-v1/perturbation.safetensors`` plus ``manifest.json``. An existing
output folder is never overwritten.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from attacks.uap import (
    EPS,
    PERTURBATION_FILE,
    VERSION,
    default_uap_dir,
    metric_tag,
    save_perturbation,
)
from attacks.uap_training import UAPTrainingResult, train_uap
from common.atomic_write import staged_folder
from common.cli_options import device_name, positive_float, positive_int
from common.image_io import list_images
from common.paths import default_data_dir
from common.weights_manifest import write_manifest

logger = logging.getLogger("train_uap")


def train_and_save(
    metric: Callable[[torch.Tensor], torch.Tensor],
    train_dir: str | Path,
    out_dir: str | Path,
    *,
    seed: int = 0,
    limit: int | None = None,
    command: str = "",
    progress: bool = True,
    **train_options,
) -> UAPTrainingResult:
    """Train on the images of ``train_dir`` and write the perturbation and its manifest."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise ValueError(
            f"{out_dir} exists: released weights are never overwritten; choose another --out"
        )
    paths = list_images(train_dir)[:limit]
    if not paths:
        raise ValueError(f"no images in {train_dir}")
    generator = torch.Generator().manual_seed(seed)
    start = time.monotonic()
    result = train_uap(metric, paths, generator=generator, progress=progress, **train_options)
    wall = time.monotonic() - start
    tag = metric_tag(metric) or type(metric).__name__
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # the folder appears complete or not at all, and never over one that appeared meanwhile
    with staged_folder(out_dir, replace=False) as staging:
        save_perturbation(result.perturbation, staging / PERTURBATION_FILE, metric=tag)
        write_manifest(
            staging,
            name=f"uap-{tag}",
            version=VERSION,
            training={
                "data": str(train_dir),
                "images": result.images_used,
                "seed": seed,
                "steps": result.steps,
                "epoch_mean_scores": result.epoch_scores,
                "options": {k: v for k, v in train_options.items() if k != "device"},
                "command": command,
                "wall_time_s": round(wall, 1),
            },
            metric=tag,
        )
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--metric-checkpoint",
        default=None,
        help="Linearity checkpoint (default: p1q2.pth beside model.py, else the stand-in metric)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="data root (default: $PURIFY_DATA or ../shared/data); trains on DATA/clean/train",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: weights/uap-<metric>-v1)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=positive_int, default=5)
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument(
        "--size", type=positive_int, default=256, help="perturbation side in pixels"
    )
    parser.add_argument("--lr", type=positive_float, default=1e-3)
    parser.add_argument(
        "--eps", type=positive_float, default=EPS, help="L-inf bound (default 10/255)"
    )
    parser.add_argument("--limit", type=positive_int, default=None, help="only the first N images")
    parser.add_argument("--device", type=device_name, default="cpu")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    return parser


def main(argv: Sequence[str] | None = None) -> UAPTrainingResult:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from model import MetricModel  # p1q2.pth beside model.py by default, else the stand-in

    metric = MetricModel(args.device, model_path=args.metric_checkpoint)
    out = args.out or default_uap_dir(metric_tag(metric) or "metric")
    train_dir = (args.data or default_data_dir()) / "clean" / "train"
    argv_list = list(sys.argv[1:] if argv is None else argv)
    result = train_and_save(
        metric,
        train_dir,
        out,
        seed=args.seed,
        limit=args.limit,
        command=shlex.join(["python", "scripts/train_uap.py", *argv_list]),
        size=args.size,
        eps=args.eps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
    )
    print(
        f"trained {result.steps} steps on {result.images_used} images; "
        f"epoch mean scores {[round(s, 3) for s in result.epoch_scores]} -> {out}"
    )
    return result

