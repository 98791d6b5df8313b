"""Tune the purifier's knobs under a runtime budget; write ``purifier/defaults.json``.

Usage::

    python scripts/tune.py [--budget 1.0] [--search coordinate|grid] [--rounds 2]
        [--tuning-dir runs/tuning-set] [--space JSON] [--dry-run] [--threads 1]

The budget is a multiple of one forward of Linearity (ResNeXt-101 32x8d, random init, batch
1) on the tuning images' sizes, measured in the same run. The tuning set (12 clean/train
photos, centre crops of 384 px, 7 attacks from different families; never the public
``clean/eval`` images) is built by ``make_dataset`` on first use and cached in
``--tuning-dir``. Each configuration gets Gain, Quality, SRCC, clean-input Gain and its time
ratio; the objective is the competition's, documented in ``evaluation/tuning.py``: the
smallest of the three margins over the baseline (resize x0.5), each normalised by issue 32's
target, maximised under the budget.

``--also METRIC DIR`` (repeatable) adds a panel: the same knobs are also scored by METRIC (a
stand-in folder or a ``p1q2.pth``) on a tuning set attacked against it in DIR (built like the
first unless ``--no-build``), against the baseline on that panel; the score takes the worst
panel, so a choice must not lose to the baseline under any judge.

Writes the chosen knobs to ``--output`` (default ``purifier/defaults.json``, the flat object
``purifier.config`` reads), the tuning record (set, objective, figures, baselines, command)
beside it as ``defaults.provenance.json``, every trial to ``OUTPUT_DIR/trials.json`` (rewritten
after each trial, so a stopped search keeps what it measured) and a
Pareto plot (gain vs quality, coloured by time ratio) to ``OUTPUT_DIR/pareto.png``.
``--dry-run`` prints the choice and writes no defaults. A defaults file whose record holds
knobs set by hand (``manual_override``, e.g. the shipped one) is replaced only with
``--force``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from common.cli_options import device_name, positive_int, report_file
from common.paths import ROOT, default_data_dir
from defenses.registry import CLASSICAL, REFERENCE, defense_names
from defenses.specs import build_defense
from evaluation import harness
from evaluation.benchmarking import (
    image_hw,
    linearity_seconds,
    machine_info,
    select_pairs,
)
from evaluation.tuning import (
    BASELINE,
    DEFAULT_SPACE,
    OBJECTIVE,
    PANEL_IMAGES,
    TARGET_MARGINS,
    TUNING_ATTACKS,
    TUNING_CROP,
    TUNING_IMAGES,
    TUNING_SEED,
    Tuner,
    build_tuning_set,
    check_not_public,
    choose,
    hand_set_knobs,
    mean_figures,
    panel_figures,
    panel_name,
    parse_space,
    provenance_path,
    write_defaults,
)
from model import MetricModel
from purifier import PROVISIONAL_DEFAULTS, PurifierConfig, resolve_weights
from purifier.config import DEFAULTS_FILE

logger = logging.getLogger("tune")

DEFAULT_TUNING_DIR = ROOT / "runs" / "tuning-set"
DEFAULT_OUTPUT_DIR = ROOT / "runs" / "tune"


def _names(spec: str) -> list[str]:
    return [s.strip() for s in spec.split(",") if s.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--budget", type=float, default=1.0, help="max time per image in Linearity forwards"
    )
    parser.add_argument("--search", choices=["coordinate", "grid"], default="coordinate")
    parser.add_argument("--rounds", type=int, default=2, help="coordinate-search rounds")
    parser.add_argument("--max-trials", type=positive_int, default=None, help="stop after N trials")
    parser.add_argument(
        "--space", default=None, help="JSON knob -> values (default: tuning.DEFAULT_SPACE)"
    )
    parser.add_argument(
        "--start", default=None, help="JSON knobs of the first trial (default: provisional)"
    )
    parser.add_argument("--tuning-dir", type=Path, default=DEFAULT_TUNING_DIR)
    parser.add_argument(
        "--no-build", action="store_true", help="use --tuning-dir as it is (no make_dataset)"
    )
    parser.add_argument("--data", type=Path, default=None, help="data root (default: shared)")
    images = parser.add_mutually_exclusive_group()
    images.add_argument("--images", default=",".join(TUNING_IMAGES), help="clean/train names")
    images.add_argument(
        "--panel-images",
        dest="images",
        action="store_const",
        const=",".join(PANEL_IMAGES),
        help=f"the judge panel's {len(PANEL_IMAGES)} clean/train photos (tuning.PANEL_IMAGES)",
    )
    parser.add_argument("--attacks", default=",".join(TUNING_ATTACKS))
    parser.add_argument("--crop", type=int, default=TUNING_CROP)
    parser.add_argument("--limit", type=int, default=None, help="images per attack (spread)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every trial's noise")
    parser.add_argument("--threads", type=positive_int, default=None)
    parser.add_argument("--device", type=device_name, default="cpu")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--checkpoint-dir", type=Path, default=ROOT, help="folder with p1q2.pth")
    parser.add_argument(
        "--also",
        nargs=2,
        action="append",
        type=Path,
        default=[],
        metavar=("METRIC", "DIR"),
        help="another panel: a metric (stand-in folder or p1q2.pth) and its tuning set folder",
    )
    parser.add_argument("--weights", type=Path, default=None, help="denoiser folder")
    parser.add_argument("--output", type=report_file, default=DEFAULTS_FILE, help="defaults file")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    parser.add_argument("--pareto", type=Path, default=None, help="default OUTPUT_DIR/pareto.png")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--linearity-repeats", type=int, default=3)
    parser.add_argument("--dry-run", action="store_true", help="print; write no defaults")
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace a defaults file whose record holds knobs set by hand (manual_override)",
    )
    parser.add_argument("--no-progress", action="store_true")
    return parser


def reference_model() -> torch.nn.Module:
    """Linearity's ResNeXt-101 (random init): the unit of the budget."""
    from metrics.linearity import IQAModel

    return IQAModel()


def start_knobs(text: str) -> dict:
    """``--start``'s JSON object of knobs; ``ValueError`` for anything else."""
    try:
        knobs = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--start is not valid JSON: {err}") from err
    if not isinstance(knobs, dict):
        raise ValueError(f"--start must be a JSON object of knobs, got {text!r}")
    return knobs


def tune(args: argparse.Namespace, argv: Sequence[str] | None) -> dict:
    """Run the whole tuning; returns the provenance record (also written unless dry run)."""
    import defense

    if args.rounds < 1 or args.batch_size < 1 or args.linearity_repeats < 1:
        raise ValueError("--rounds, --batch-size and --linearity-repeats must be >= 1")
    if not args.budget > 0:
        raise ValueError(f"--budget must be > 0 Linearity forwards, got {args.budget}")
    if not args.no_plot:
        from evaluation.comparison_plots import require_matplotlib

        require_matplotlib()
    space = parse_space(args.space) if args.space else dict(DEFAULT_SPACE)
    start = PROVISIONAL_DEFAULTS
    if args.start:
        start = start.replace(**start_knobs(args.start))
    device = torch.device(args.device)
    weights = resolve_weights(args.weights, defense.WEIGHTS_DIR)
    data = args.data or default_data_dir()
    metric = harness.load_metric(args.checkpoint_dir, device)
    panels = [(metric, args.tuning_dir)]
    for metric_path, tuning_dir in args.also:
        if not metric_path.exists():
            raise ValueError(f"--also: no metric at {metric_path}")
        panels.append((MetricModel(device, metric_path).eval(), tuning_dir))
    panel_pairs = []
    for panel_metric, tuning_dir in panels:
        if not args.no_build:
            build_tuning_set(
                data / "clean" / "train",
                tuning_dir,
                panel_metric,
                images=_names(args.images),
                attacks=_names(args.attacks),
                crop=args.crop,
                seed=TUNING_SEED,
                device=device,
                progress=not args.no_progress,
            )
        chosen = select_pairs(harness.collect_pairs(tuning_dir), args.limit)
        check_not_public(chosen, data / "clean" / "eval")
        panel_pairs.append(chosen)
    pairs = panel_pairs[0]
    sizes = {image_hw(p.attacked) for chosen in panel_pairs for p in chosen}
    linearity = linearity_seconds(sizes, reference_model(), args.linearity_repeats, device)

    scored = [(chosen, m) for (m, _), chosen in zip(panels, panel_pairs, strict=True)]
    baselines, baseline_panels = {}, {}
    for name in (*defense_names(REFERENCE), *defense_names(CLASSICAL)):
        per_panel = panel_figures(
            name,
            lambda name=name: build_defense(name, device),
            scored,
            linearity,
            batch_size=args.batch_size,
            device=device,
        )
        baseline_panels[name] = per_panel
        baselines[name] = mean_figures(per_panel)
        if len(panels) > 1:
            baselines[name]["panels"] = per_panel
    logger.info("the baseline (%s) on the tuning set(s): %s", BASELINE, baseline_panels[BASELINE])

    def make(config: PurifierConfig):
        return defense.Defense(device, config=config, weights=weights, seed=args.seed)

    tuner = Tuner(
        pairs,
        metric,
        linearity,
        make,
        budget=args.budget,
        baseline=baseline_panels[BASELINE],
        extra=scored[1:],
        batch_size=args.batch_size,
        device=device,
        progress=not args.no_progress,
        record=args.output_dir / "trials.json",
    )
    try:
        if args.search == "grid":
            tuner.grid_search(space, start, args.max_trials)
        else:
            tuner.coordinate_search(start, space, args.rounds, args.max_trials)
    finally:
        tuner.close()
    trials = list(tuner.trials.values())  # trials.json: rewritten by the tuner after each
    best, beats_baseline = choose(trials, args.budget)
    if not args.no_plot:
        from evaluation.comparison_plots import draw_pareto

        pareto = draw_pareto(
            trials,
            args.pareto or args.output_dir / "pareto.png",
            budget=args.budget,
            min_quality=baselines["none"]["quality"],
            chosen=best,
            baselines=baselines,
        )
        print(f"wrote {pareto}")
    provenance = {
        "defaults": best.config.to_dict(),
        "objective": OBJECTIVE,
        "budget_linearity_forwards": args.budget,
        "baseline": BASELINE,
        "target_margins": TARGET_MARGINS,
        "beats_baseline_everywhere": beats_baseline,
        "figures": best.to_dict(),
        "baselines": baselines,
        "tuning_set": describe_tuning_set(args.tuning_dir, pairs),
        "search": {
            "method": args.search,
            "space": {k: list(v) for k, v in space.items()},
            "start": start.to_dict(),
            "rounds": args.rounds,
            "trials_run": sum(not t.skipped for t in trials),
            "trials_skipped": sum(t.skipped for t in trials),
        },
        "linearity_seconds": {f"{h}x{w}": s for (h, w), s in sorted(linearity.items())},
        "metric": getattr(metric, "name", type(metric).__name__),
        "panels": [
            {"metric": panel_name(m, i), **describe_tuning_set(d, chosen)}
            for i, ((m, d), chosen) in enumerate(zip(panels, panel_pairs, strict=True))
        ],
        "weights": str(weights),
        "seed": args.seed,
        "command": shlex.join(
            ["python", "scripts/tune.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(args.device),
    }
    return provenance


def describe_tuning_set(tuning_dir: Path, pairs: Sequence[Any]) -> dict[str, Any]:
    """What a panel was tuned on, for the provenance record: its folder, the references and
    attacks of the chosen ``pairs``, and the ``attacks.json`` settings ``make_dataset`` left
    there (None for a folder it did not make)."""
    settings = Path(tuning_dir) / "attacks.json"
    return {
        "dir": str(tuning_dir),
        "references": sorted({p.reference.name for p in pairs}),
        "attacks": sorted({p.attack for p in pairs}),
        "pairs": len(pairs),
        "make_dataset": json.loads(settings.read_text()) if settings.is_file() else None,
    }


def refuse_to_replace_hand_set_knobs(output: Path) -> None:
    """ValueError when ``output``'s tuning record says some knobs were set by hand (the
    tuner's pick would silently undo that decision), or cannot be read."""
    override = hand_set_knobs(output)
    if override is None:
        return
    knobs = ", ".join(
        f"{name}={entry.get('shipped')} (tuner: {entry.get('tuner_choice')})"
        if isinstance(entry, dict)
        else name
        for name, entry in (override.get("knobs") or {}).items()
    )
    raise ValueError(
        f"{output} holds knobs set by hand over the tuner's choice ({knobs or 'see the record'}; "
        f"the reason is in {provenance_path(output)}). Write elsewhere with --output, look "
        "with --dry-run, or replace them with --force"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        if not args.dry_run and not args.force:
            refuse_to_replace_hand_set_knobs(args.output)
        provenance = tune(args, argv)
        if not args.dry_run:
            config = PurifierConfig(**provenance["defaults"])
            paths = write_defaults(config, args.output, provenance)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"tune.py: error: {err}") from err
    figures_ = provenance["figures"]
    print(json.dumps(provenance["defaults"]))
    print(
        f"gain {figures_['gain']:.3f} %, quality {figures_['quality']:.4f}, "
        f"srcc {figures_['srcc']:.4f}, clean gain {figures_['clean_gain']:.3f} % "
        f"(means over panels), time {figures_['time_ratio']:.3f}x Linearity"
    )
    for panel, margins in figures_["margins"].items():
        shown = ", ".join(f"{k} {v:+.2f}" for k, v in margins.items())
        print(f"  margins over {provenance['baseline']} under {panel}: {shown}")
    print(
        f"score (smallest margin; 1 = every target met) {figures_['objective']:+.3f}: "
        f"{'beats' if provenance['beats_baseline_everywhere'] else 'does NOT beat'} the "
        "baseline on every metric under every panel"
    )
    if args.dry_run:
        print("dry run: no defaults written")
    else:
        print(f"wrote {paths[0]} and {paths[1]}")
    return 0
