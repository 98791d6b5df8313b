"""Evaluate the stand-in metric: SRCC/PLCC on the CLIVE test split and forward-time ratio.

Scores every test image at its full resolution (no resizing, as the competition does) through
``model.MetricModel`` backed by the stand-in folder, then times one forward pass on a 512x384
image for the stand-in and for a randomly initialised ResNeXt-101 Linearity model in the same
process (median of ``--repeats``).

    python scripts/eval_metric.py --weights weights/standin-metric-v1 --json runs/eval.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from tqdm import tqdm

from common import paths
from common.cli_options import positive_int, report_file
from common.image_io import load_images_uint8
from common.weights_manifest import verify_manifest
from metrics import standin as standin_metric
from metrics.clive_data import read_mos_csv
from metrics.linearity import IQAModel
from model import MetricModel


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=paths.default_data_dir(), help="holds clive/")
    p.add_argument("--weights", type=Path, default=standin_metric.STANDIN_DIR)
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--repeats", type=positive_int, default=5, help="timed forwards per model")
    p.add_argument("--skip-speed", action="store_true", help="only SRCC/PLCC")
    p.add_argument("--json", type=report_file, default=None, help="write the figures here")
    return p.parse_args(argv)


def standin_metric_model(folder: Path, device: str = "cpu") -> MetricModel:
    """``MetricModel`` on the stand-in saved in ``folder``."""
    return MetricModel(device, folder)


def median_forward_seconds(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Median wall time of ``model(x)`` under ``no_grad`` after one warm-up call."""
    times = []
    with torch.no_grad():
        model(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    manifest = verify_manifest(args.weights)
    metric = standin_metric_model(args.weights)
    try:
        rows = read_mos_csv(args.data, "test")
    except FileNotFoundError as err:
        raise SystemExit(f"eval_metric.py: error: {err}") from err
    images = load_images_uint8([r.path for r in rows], "test images")
    scores = []
    with torch.no_grad():
        for image in tqdm(images, desc="scoring CLIVE test"):
            scores.append(metric(image[None].float() / 255.0).item())
    mos = np.asarray([r.mos for r in rows])
    pred = np.asarray(scores)
    result: dict = {
        "weights": str(args.weights),
        "weights_version": manifest.get("version"),
        "n_test": len(rows),
        "srcc": float(stats.spearmanr(pred, mos)[0]),
        "plcc": float(stats.pearsonr(pred, mos)[0]),
        "rmse_mos": float(np.sqrt(np.mean((pred - mos) ** 2))),
    }
    print(f"CLIVE test ({len(rows)} images): SRCC {result['srcc']:.4f} PLCC {result['plcc']:.4f}")
    if not args.skip_speed:
        x = torch.rand(1, 3, 384, 512, generator=torch.Generator().manual_seed(0))
        t_standin = median_forward_seconds(metric, x, args.repeats)
        reference = IQAModel().eval()
        t_resnext = median_forward_seconds(reference, x, args.repeats)
        result.update(
            threads=args.threads,
            standin_seconds=t_standin,
            resnext101_seconds=t_resnext,
            time_ratio=t_standin / t_resnext,
        )
        print(
            f"forward 512x384 on {args.threads} threads: stand-in {t_standin:.4f} s, "
            f"ResNeXt-101 Linearity {t_resnext:.4f} s, ratio {t_standin / t_resnext:.3f}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0

