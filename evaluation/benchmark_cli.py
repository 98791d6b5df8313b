"""Compare defenses of the Linearity metric on one attacked dataset: ``BENCHMARKS.md`` + a grid.

Usage::

    python scripts/benchmark.py [--data-dir runs/public-set] [--defenses none,resize,...]
        [--limit N] [--subset-for diffpure=3] [--seed 0] [--threads 1]
        [--output-dir runs/benchmark] [--markdown OUTPUT_DIR/BENCHMARKS.md]
        [--grid OUTPUT_DIR/benchmark_grid.png] [--json OUTPUT_DIR/benchmark.json] [--no-memory]

Everything is written under ``--output-dir``. The repository's ``BENCHMARKS.md`` and
``docs/benchmark_grid.png`` are rewritten only when named: ``--markdown BENCHMARKS.md --grid
docs/benchmark_grid.png``, so an experiment on other data never overwrites them.

The dataset has the competition layout (``attacked/<attack>/<image>``, ``reference/<image>``;
the public set is ``python scripts/make_dataset.py runs/public-set``, built from
``clean/eval``). In one run every defense is scored with ``test.py``'s own ``evaluate`` and
``aggregate`` (Gain, Quality, SRCC per attack and ``All Attacks``), and also on the clean
references (clean-input gain and quality: what the defense costs an unattacked image).

Time is reported as a ratio: the defense's wall time per image over the median time of one
forward of Linearity (ResNeXt-101 32x8d ``metrics.linearity.IQAModel()``, random init, eval,
no_grad, batch 1) on an image of the same size, measured in the same run with the same
threads.

``--subset-for NAME=N`` runs a slow defense (DiffPure: 100 network calls per image) on N
images per attack only; it is marked as such, and the targets compare it with the other
defenses on the same images. The targets of issue 5 are checked for every defense but
``none``: Gain <= min(3 %, best classical Gain / 3), Quality >= the undefended attacked
Quality, SRCC >= 0.97, clean-input Gain <= 2 %, time <= 1x Linearity (goal 0.5x).

The report opens with what the competition ranks: each defense's Gain, Quality and SRCC minus
the baseline's (``resize``: x0.5, returned at half size), positive = better. ``--judge METRIC
DATA_DIR`` (repeatable) scores every defense again under another metric on its own attacked
set, a panel of judges in one command, so a choice that only one proxy likes shows; each
judge adds its own difference table.

Unless ``--no-memory``, the peak resident memory of purifying a synthetic 4000x3000 photo in a
fresh process (``scripts/peak_memory.py``: ``Defense.apply_defense`` on the whole image and the
purify CLI's tiled path) is measured once and reported in a "Memory" section (target 4 GB).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

import purifier.config
from common.cli_options import (
    device_name,
    non_negative_int,
    positive_int,
    report_file,
)
from common.paths import ROOT
from defenses.registry import benchmark_defenses
from defenses.specs import build_defense, split_chain, split_defense_spec
from evaluation import harness
from evaluation.benchmark_report import render_markdown, summary_table, to_json
from evaluation.benchmarking import (
    choose_grid_pairs,
    image_hw,
    linearity_seconds,
    machine_info,
    run_benchmark,
    select_pairs,
)
from evaluation.peak_memory import benchmark_memory
from metrics.linearity import IQAModel
from model import MetricModel

logger = logging.getLogger("benchmark")

DEFAULT_SUBSETS = {"diffpure": 3}
DEFAULT_DATA_DIR = ROOT / "runs" / "public-set"
DEFAULT_OUTPUT_DIR = ROOT / "runs" / "benchmark"
MARKDOWN_NAME = "BENCHMARKS.md"
GRID_NAME = "benchmark_grid.png"


def parse_subsets(specs: Sequence[str] | None) -> dict[str, int | None]:
    """``["diffpure=3"]`` -> ``{"diffpure": 3}``; ``NAME=all`` -> None (the full set)."""
    subsets: dict[str, int | None] = {}
    for spec in specs or []:
        name, sep, value = spec.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"--subset-for takes NAME=N (images per attack), got {spec!r}")
        if value.strip() == "all":
            subsets[name] = None
            continue
        try:
            count = int(value)
        except ValueError:
            count = 0
        if count < 1:
            raise ValueError(
                f"--subset-for {name}: N must be an integer >= 1 or 'all', got {value!r}"
            )
        subsets[name] = count
    return subsets


def parse_defenses(spec: str) -> list[str]:
    from defenses.registry import DEFENSES

    names = list(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    parts = [part for name in names for part in split_chain(name)]
    unknown = [p for p in parts if split_defense_spec(p)[0] not in DEFENSES]
    if unknown or not names:
        raise ValueError(f"unknown or no defenses {unknown}; known: {', '.join(sorted(DEFENSES))}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="attacked dataset (attacked/<attack>/<img>, reference/<img>); default: "
        "runs/public-set (python scripts/make_dataset.py runs/public-set)",
    )
    parser.add_argument(
        "--defenses",
        default=",".join(benchmark_defenses()),
        help="comma-separated defense specs: NAME, ddpm@WEIGHTS, ddpm:KNOB=VALUE, "
        "jpeg:quality=75 (a baseline's own option), A+B (A, then B)",
    )
    parser.add_argument("--limit", type=int, default=None, help="images per attack (spread)")
    parser.add_argument(
        "--subset-for",
        action="append",
        metavar="NAME=N",
        help="run defense NAME on N images per attack only ('all': every image); "
        f"default: {', '.join(f'{k}={v}' for k, v in DEFAULT_SUBSETS.items())}",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the diffusion defenses")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads")
    parser.add_argument("--device", type=device_name, default="cpu")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--num-workers", type=int, default=0, help="image-decoding threads")
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=ROOT,
        help="folder with p1q2.pth (else MetricModel's fallback, the stand-in metric)",
    )
    parser.add_argument(
        "--metric",
        type=Path,
        default=None,
        help="score with this metric instead: a p1q2.pth-format file or a stand-in folder "
        "(e.g. weights/standin-metric-alt-v1, for transfer figures); overrides --checkpoint-dir",
    )
    parser.add_argument(
        "--judge",
        nargs=2,
        action="append",
        type=Path,
        default=[],
        metavar=("METRIC", "DATA_DIR"),
        help="also score every defense under METRIC (a stand-in folder or p1q2.pth-format "
        "file) on DATA_DIR (attacked against it); repeatable",
    )
    parser.add_argument(
        "--weights", type=Path, default=None, help="denoiser folder (default: newest release)"
    )
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    parser.add_argument(
        "--markdown", type=report_file, default=None, help=f"default OUTPUT_DIR/{MARKDOWN_NAME}"
    )
    parser.add_argument(
        "--json", type=report_file, default=None, help="default OUTPUT_DIR/benchmark.json"
    )
    parser.add_argument(
        "--grid",
        type=Path,
        default=None,
        help=f"comparison grid PNG, linked from the markdown (default OUTPUT_DIR/{GRID_NAME})",
    )
    parser.add_argument("--no-grid", action="store_true", help="skip the comparison grid")
    parser.add_argument("--grid-rows", type=non_negative_int, default=3)
    parser.add_argument(
        "--grid-crop", type=non_negative_int, default=160, help="tile size in px (0: whole)"
    )
    parser.add_argument("--linearity-repeats", type=int, default=3)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--no-memory",
        action="store_true",
        help="skip the peak-memory measurement (a 4000x3000 photo, scripts/peak_memory.py)",
    )
    return parser


def memory_figures(args: argparse.Namespace) -> list[dict] | None:
    """Peak RSS of purifying a 4000x3000 photo (whole and via the purify CLI), or None."""
    if args.no_memory:
        return None
    return benchmark_memory(args.weights, args.threads or torch.get_num_threads())


def reference_model() -> nn.Module:
    """The network one defense run is compared with: Linearity's ResNeXt-101, random init."""
    return IQAModel()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        names = parse_defenses(args.defenses)
        subsets = {**DEFAULT_SUBSETS, **parse_subsets(args.subset_for)}
        subsets = {k: v for k, v in subsets.items() if k in names and v is not None}
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        if args.batch_size < 1 or args.num_workers < 0 or args.linearity_repeats < 1:
            raise ValueError(
                "--batch-size and --linearity-repeats must be >= 1, --num-workers >= 0"
            )
        if not args.no_grid:
            from evaluation.comparison_plots import require_matplotlib

            require_matplotlib()
        if args.data_dir == DEFAULT_DATA_DIR and not args.data_dir.is_dir():
            raise ValueError(
                f"{args.data_dir} does not exist: build the public set with "
                "`python scripts/make_dataset.py runs/public-set`, or pass --data-dir"
            )
        pairs = select_pairs(harness.collect_pairs(args.data_dir), args.limit)
        device = torch.device(args.device)
        if args.metric is not None:
            metric = MetricModel(device, args.metric).eval()
        else:
            metric = harness.load_metric(args.checkpoint_dir, device)
        defenses = {
            n: build_defense(n, device, weights=args.weights, seed=args.seed) for n in names
        }
        judge_panels = [
            (judge_metric, judge_data, select_pairs(harness.collect_pairs(judge_data), args.limit))
            for judge_metric, judge_data in args.judge
        ]
        every_pair = [*pairs, *(p for *_, judge_pairs in judge_panels for p in judge_pairs)]
        linearity = linearity_seconds(
            {image_hw(p.attacked) for p in every_pair},
            reference_model(),
            args.linearity_repeats,
            device,
        )
        common = select_pairs(pairs, min(subsets.values())) if subsets else pairs
        grid_pairs = [] if args.no_grid else choose_grid_pairs(common, args.grid_rows)
        run_options = {
            "subsets": subsets,
            "batch_size": args.batch_size,
            "device": device,
            "num_workers": args.num_workers,
            "progress": not args.no_progress,
        }
        runs = run_benchmark(
            pairs, defenses, metric, linearity, grid_pairs=grid_pairs, **run_options
        )
        judges = {}
        for judge_metric, judge_data, judge_pairs in judge_panels:
            label = f"{judge_metric} on `{judge_data}` ({len(judge_pairs)} images)"
            logger.info("judge %s", label)
            judges[label] = run_benchmark(
                judge_pairs,
                defenses,
                MetricModel(device, judge_metric).eval(),
                linearity,
                **run_options,
            )
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"benchmark.py: error: {err}") from err

    output_dir = args.output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    markdown_path = args.markdown or output_dir / MARKDOWN_NAME
    for name, run in runs.items():
        folder = output_dir / name.replace("/", "_")
        harness.write_scores(harness.aggregate(run.records), folder, "full")
    per_attack = {len([p for p in pairs if p.attack == a]) for a in {p.attack for p in pairs}}
    meta = {
        "command": shlex.join(
            ["python", "scripts/benchmark.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(device),
        "device": str(device),
        "data_dir": str(args.data_dir),
        "attacks": len({p.attack for p in pairs}),
        "images_per_attack": "/".join(str(n) for n in sorted(per_attack)),
        "metric": str(args.metric or getattr(metric, "name", type(metric).__name__)),
        "seed": args.seed,
        "batch_size": args.batch_size,
        "subsets": subsets,
        "ddpm_knobs": str(purifier.config.DEFAULTS_FILE)
        if purifier.config.DEFAULTS_FILE.is_file()
        else "provisional defaults (no purifier/defaults.json yet)",
        "linearity_seconds": {f"{h}x{w}": s for (h, w), s in sorted(linearity.items())},
    }
    memory = memory_figures(args)
    if memory is not None:
        meta["memory"] = memory
    json_path = args.json or output_dir / "benchmark.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    record = to_json(runs, meta)
    record["judges"] = {label: to_json(judge, {})["defenses"] for label, judge in judges.items()}
    json_path.write_text(json.dumps(record, indent=1) + "\n")
    grid_link = None
    if grid_pairs:
        from evaluation.comparison_plots import draw_grid

        grid_path = draw_grid(
            runs, grid_pairs, args.grid or output_dir / GRID_NAME, args.grid_crop or None
        )
        grid_link = os.path.relpath(grid_path.resolve(), markdown_path.resolve().parent)
        print(f"wrote {grid_path}")
    markdown_path.parent.mkdir(parents=True, exist_ok=True)
    markdown_path.write_text(render_markdown(runs, meta, grid_link, judges))
    print("\n".join(summary_table(runs)))
    print(f"wrote {markdown_path} and {json_path}")
    return 0

