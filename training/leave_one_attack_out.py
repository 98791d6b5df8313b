"""Leave-one-attack-out check of bridge fine-tuning (issue 8, part 3).

    python scripts/leave_one_attack_out.py --output-dir runs/loao --max-steps 200 --threads 1
    python scripts/leave_one_attack_out.py --output-dir runs/loao --only all,fgsm,ifgsm
    python scripts/leave_one_attack_out.py --output-dir runs/loao --report-only
    python scripts/leave_one_attack_out.py ... -- --chain-steps 2   # more fine-tune options
    python scripts/leave_one_attack_out.py --output-dir runs/loao --report-only \
        --score runs/tuning-set=weights/standin-metric-v1

Runs ``scripts/finetune_bridge.py`` (one subprocess each, same seed, same starting weights):

- ``all``: trained on every attack, validated on every attack: the in-distribution Gain of
  each attack;
- ``without-<attack>``: trained on the other attacks, validated on ``<attack>`` only: its
  held-out Gain.

Validation is finetune_bridge's: fixed crops of held-out ``clean/train`` images attacked with
the attack's defaults, purified at t*=60 with 2 DDPM steps, Gain as in ``test.py``. The
starting weights' Gain on the same crops comes from the ``all`` run. A finished run (its
``out/manifest.json`` exists) is skipped, so an interrupted study resumes; several processes
can share the study with disjoint ``--only`` lists. A finished run whose manifest records
other fine-tune options (steps, weights, seed, attacks, extra options) stops the study with
the differences listed, rather than being reused. The report (markdown and JSON) covers the
finished runs. Target of issue 8: every held-out Gain <= 2x its in-distribution Gain.

``--score DATA_DIR=METRIC`` (repeatable) also scores the finished weights the way users run
them: ``scripts/benchmark.py`` on an attacked dataset in the competition layout, with the
shipped ``Defense`` knobs (``purifier/defaults.json``) and the given metric, in one run for the
``all`` weights and the ``without-<attack>`` weights of every attack the dataset has; weights
trained without an attack are read on that attack only. The benchmark goes to
``OUTPUT_DIR/score-<dataset folder name>``; a finished benchmark with the same defenses is
reused.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from attacks.registry import ATTACKS
from common.cli_options import positive_int
from common.image_io import list_folders
from common.paths import ROOT

logger = logging.getLogger("leave_one_attack_out")

ALL = "all"
TARGET_RATIO = 2.0
UNDEFENDED = "none"


def parse_score(spec: str) -> tuple[Path, Path]:
    """``DATA_DIR=METRIC`` -> ``(data_dir, metric)``."""
    data, sep, metric = spec.partition("=")
    if not sep or not data or not metric:
        raise argparse.ArgumentTypeError(f"--score takes DATA_DIR=METRIC, got {spec!r}")
    return Path(data), Path(metric)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, extra = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", type=Path, required=True, help="one folder per run")
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="attacks of the study")
    parser.add_argument("--only", default=None, help="runs to do here: 'all' and/or attacks")
    parser.add_argument("--init", type=Path, default=ROOT / "weights" / "ddpm-v1")
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--metric-weight", type=float, default=0.0, help="0: bridge + prior")
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report-only", action="store_true", help="only write the report")
    parser.add_argument(
        "--score",
        type=parse_score,
        action="append",
        default=[],
        metavar="DATA_DIR=METRIC",
        help="also benchmark the weights with the shipped Defense knobs on this attacked dataset",
    )
    args = parser.parse_args(argv)
    args.finetune_options = extra
    args.attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    unknown = [a for a in args.attacks if a not in ATTACKS]
    if unknown or len(args.attacks) < 2:
        parser.error(f"--attacks needs >= 2 of {', '.join(ATTACKS)}; unknown: {unknown}")
    runs = [ALL, *args.attacks]
    if args.only is None:
        args.only = runs
    else:
        args.only = [r.strip() for r in args.only.split(",") if r.strip()]
        if not args.only or any(r not in runs for r in args.only):
            parser.error(f"--only takes names from {', '.join(runs)}")
    if args.max_steps < 1:
        parser.error("--max-steps must be >= 1")
    return args


def run_folder(output_dir: Path, name: str) -> Path:
    """Folder of one run: ``all`` or ``without-<attack>``."""
    return output_dir / (ALL if name == ALL else f"without-{name}")


def finetune_command(args: argparse.Namespace, name: str) -> list[str]:
    """The ``finetune_bridge.py`` command line of run ``name``."""
    folder = run_folder(args.output_dir, name)
    train = args.attacks if name == ALL else [a for a in args.attacks if a != name]
    validate = args.attacks if name == ALL else [name]
    return [
        sys.executable, str(ROOT / "scripts" / "finetune_bridge.py"),
        "--output", str(folder / "out"), "--run-dir", str(folder), "--init", str(args.init),
        "--max-steps", str(args.max_steps), "--val-every", str(args.max_steps),
        "--checkpoint-every", str(max(50, args.max_steps // 4)),
        "--metric-weight", str(args.metric_weight), "--threads", str(args.threads),
        "--seed", str(args.seed), "--attacks", ",".join(train),
        "--val-attacks", ",".join(validate), *args.finetune_options,
    ]  # fmt: skip


# finetune_bridge options that do not change the weights a run makes (or name its folders).
RUN_ONLY_OPTIONS = frozenset(
    {"output", "run_dir", "resume", "threads", "val_every", "checkpoint_every", "log_every"}
)


def run_options(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """The options ``finetune_bridge.py`` parses from run ``name``'s command, minus
    ``RUN_ONLY_OPTIONS``: what its manifest must record for a finished run to belong here."""
    from training.bridge import parse_args as parse_finetune_args

    options = vars(parse_finetune_args(finetune_command(args, name)[2:]))
    return {k: v for k, v in options.items() if k not in RUN_ONLY_OPTIONS}


def check_inputs(args: argparse.Namespace) -> None:
    """Before any fine-tune starts: every run's command must parse as ``finetune_bridge.py``
    takes it, with its input paths present, and every ``--score`` dataset and metric must
    exist. ``SystemExit`` naming the problem (a typo would otherwise surface hours in)."""
    from training.bridge import check_paths_exist
    from training.bridge import parse_args as parse_finetune_args

    for name in [ALL, *args.attacks]:
        try:
            check_paths_exist(parse_finetune_args(finetune_command(args, name)[2:]))
        except ValueError as err:
            raise SystemExit(f"leave_one_attack_out.py: error: {err}") from err
    for data_dir, metric in args.score:
        dataset_attacks(data_dir)
        if not metric.exists():
            raise SystemExit(f"--score: no metric at {metric}")


def same_option(recorded: Any, wanted: Any) -> bool:
    """Whether a manifest's JSON value is the parsed option ``wanted`` (paths compared
    resolved, so a relative and an absolute spelling of one folder match)."""
    if isinstance(wanted, Path):
        return isinstance(recorded, str) and Path(recorded).resolve() == wanted.resolve()
    if isinstance(wanted, (list, tuple)):
        return (
            isinstance(recorded, list)
            and len(recorded) == len(wanted)
            and all(same_option(r, w) for r, w in zip(recorded, wanted, strict=True))
        )
    return recorded == wanted


def check_finished_runs(args: argparse.Namespace) -> None:
    """Refuse (``SystemExit``) a study whose folder holds a finished run made with other
    fine-tune options than this command's, instead of skipping or reporting it as if it were
    this study's: a study's runs differ only in the attacks they leave out."""
    for name in [ALL, *args.attacks]:
        folder = run_folder(args.output_dir, name)
        training = read_training(folder)
        if training is None:
            continue
        recorded = training.get("options")
        if not isinstance(recorded, dict):
            raise SystemExit(f"{folder}: its manifest records no fine-tune options")
        differ = {
            key: (recorded.get(key), wanted)
            for key, wanted in run_options(args, name).items()
            if not same_option(recorded.get(key), wanted)
        }
        if differ:
            listed = "; ".join(f"{k}: {r!r} there, {w!r} here" for k, (r, w) in differ.items())
            raise SystemExit(
                f"{folder} finished with other options ({listed}): give the study's own "
                "options, or another --output-dir"
            )


def run_study(args: argparse.Namespace) -> int:
    """Run the selected fine-tunes one after the other; the number that failed."""
    failed = 0
    for name in args.only:
        folder = run_folder(args.output_dir, name)
        if (folder / "out" / "manifest.json").exists():
            logger.info("%s: finished earlier, skipped", folder)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        command = finetune_command(args, name)
        resume = ["--resume", "latest"] if (folder / "checkpoints").is_dir() else []
        logger.info("%s: %s", name, shlex.join(command + resume))
        start = time.monotonic()
        with open(folder / "run.log", "a") as log:
            code = subprocess.call(command + resume, stdout=log, stderr=subprocess.STDOUT)
        logger.info("%s: exit %d after %.1f min", name, code, (time.monotonic() - start) / 60)
        failed += code != 0
    return failed


def read_training(folder: Path) -> dict[str, Any] | None:
    """The ``training`` record of a finished run, or None."""
    manifest = folder / "out" / "manifest.json"
    if not manifest.exists():
        return None
    return json.loads(manifest.read_text())["training"]


def with_ratio(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with ``ratio`` = held-out / in-distribution Gain when both are known."""
    if row["in_distribution"] and row["held_out"] is not None:
        row["ratio"] = round(row["held_out"] / row["in_distribution"], 2)
    return row


COLUMN_TITLES = {
    "undefended": "undefended",
    "start": "starting weights",
    "in_distribution": "in-distribution (all attacks)",
    "held_out": "held out (trained without it)",
    "seen_ratio": "same weights on the attacks they trained on / all",
    "uplift_in": "surviving uplift, all",
    "uplift_held": "surviving uplift, held out",
    "uplift_ratio": "surviving uplift: held out / all",
}


def table_lines(
    rows: list[dict[str, Any]], columns: list[str], after: tuple[str, ...] = ()
) -> list[str]:
    """A markdown table of ``rows``: the attack, ``columns`` (Gain, %), the ratio, the
    ``after`` columns, the verdict."""

    def cell(value: Any) -> str:
        return "–" if value is None else f"{value:.2f}"

    header = ["attack", *(COLUMN_TITLES[c] for c in columns), "held-out / in-distribution"]
    header += [COLUMN_TITLES[c] for c in after]
    lines = ["| " + " | ".join([*header, "target"]) + " |", "|---" * (len(header) + 1) + "|"]
    for row in rows:
        ratio = row.get("ratio")
        verdict = "" if ratio is None else ("✅" if ratio <= TARGET_RATIO else "❌")
        cells = [row["attack"], *(cell(row[c]) for c in columns), cell(ratio)]
        cells += [cell(row.get(c)) for c in after]
        lines.append("| " + " | ".join([*cells, verdict]) + " |")
    return lines


def study_table(output_dir: Path, attacks: list[str]) -> list[dict[str, Any]]:
    """One row per attack: start, in-distribution and held-out Gain (None where missing)."""
    everything = read_training(run_folder(output_dir, ALL))
    rows = []
    for attack in attacks:
        key = f"gain/{attack}"
        held = read_training(run_folder(output_dir, attack))
        row: dict[str, Any] = {
            "attack": attack,
            # a held-out run validates on its attack alone: its undefended Gain is the attack's
            "undefended": held["validation"]["undefended_gain"] if held else None,
            "start": everything["init_validation"].get(key) if everything else None,
            "in_distribution": everything["validation"].get(key) if everything else None,
            "held_out": held["validation"].get(key) if held else None,
        }
        rows.append(with_ratio(row))
    return rows


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The report as markdown."""
    extra = shlex.join(args.finetune_options)
    init = args.init.resolve()
    init_name = init.relative_to(ROOT) if init.is_relative_to(ROOT) else init
    lines = [
        "# Leave-one-attack-out: bridge fine-tuning on unseen attacks",
        "",
        "Generated by `scripts/leave_one_attack_out.py`.",
        "",
        f"- Command: `{shlex.join(['python', 'scripts/leave_one_attack_out.py', *sys.argv[1:]])}`",
        f"- Each run: {args.max_steps} steps from `{init_name}`, metric weight "
        f"{args.metric_weight:g}, seed {args.seed}"
        + (f", extra options `{extra}`" if extra else ""),
        f"- Target: held-out <= {TARGET_RATIO:g}x in-distribution.",
        "",
        "## The fine-tunes' own validation",
        "",
        "Gain (%) of a fixed probe purifier (t*=60, 2 DDPM steps) on attacked crops of 8 "
        "held-out `clean/train` images; undefended = the attack's Gain without defense.",
        "",
        *table_lines(rows, ["undefended", "start", "in_distribution", "held_out"]),
    ]
    return "\n".join(lines) + "\n"


def weights_spec(output_dir: Path, name: str) -> str:
    """``benchmark.py``'s defense spec of run ``name``'s weights."""
    return f"ddpm@{run_folder(output_dir, name) / 'out'}"


def dataset_attacks(data_dir: Path) -> list[str]:
    """The attack folders of a competition-layout dataset, sorted."""
    folder = data_dir / "attacked"
    if not folder.is_dir():
        raise SystemExit(f"--score: no attacked/ folder in {data_dir}")
    return [p.name for p in list_folders(folder)]


def score_plan(args: argparse.Namespace, data_dir: Path) -> tuple[list[str], list[str]]:
    """``(held-out attacks to read, benchmark defense specs)`` for one dataset: the attacks of
    the study the dataset has whose ``without-`` run finished, and the specs to compare."""
    present = set(dataset_attacks(data_dir))
    held = [
        a
        for a in args.attacks
        if a in present and read_training(run_folder(args.output_dir, a)) is not None
    ]
    specs = [UNDEFENDED, weights_spec(args.output_dir, ALL)]
    return held, specs + [weights_spec(args.output_dir, a) for a in held]


def score_folder(output_dir: Path, data_dir: Path) -> Path:
    """Where ``--score`` on ``data_dir`` writes its benchmark and table."""
    return output_dir / f"score-{data_dir.resolve().name}"


def score_command(
    args: argparse.Namespace, data_dir: Path, metric: Path, specs: list[str], folder: Path
) -> list[str]:
    """The ``benchmark.py`` command line scoring ``specs`` on one dataset."""
    return [
        sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--data-dir", str(data_dir),
        "--metric", str(metric), "--defenses", ",".join(specs), "--threads", str(args.threads),
        "--seed", str(args.seed), "--no-memory", "--no-grid", "--no-progress",
        "--linearity-repeats", "1", "--output-dir", str(folder),
    ]  # fmt: skip


def run_score(args: argparse.Namespace, data_dir: Path, metric: Path) -> dict[str, Any] | None:
    """Benchmark the study's weights on one dataset (reusing a finished benchmark of the same
    defenses); its ``benchmark.json``, or None if the ``all`` run or the benchmark failed."""
    folder = score_folder(args.output_dir, data_dir)
    if read_training(run_folder(args.output_dir, ALL)) is None:
        logger.warning("--score %s: the 'all' run has not finished", data_dir)
        return None
    _, specs = score_plan(args, data_dir)
    result = folder / "benchmark.json"
    if result.exists():
        previous = json.loads(result.read_text())
        if sorted(previous["defenses"]) == sorted(specs):
            logger.info("--score %s: reusing %s", data_dir, result)
            return previous
        result.unlink()  # other defenses: never report a stale benchmark as this one
    command = score_command(args, data_dir, metric, specs, folder)
    folder.mkdir(parents=True, exist_ok=True)
    logger.info("--score %s: %s", data_dir, shlex.join(command))
    with open(folder / "run.log", "a") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    if code != 0 or not result.exists():
        logger.error("--score %s: benchmark exit %d, see %s", data_dir, code, folder / "run.log")
        return None
    return json.loads(result.read_text())


def attack_row(benchmark: dict[str, Any], spec: str, attack: str) -> dict[str, Any] | None:
    """``spec``'s row for ``attack`` in a ``benchmark.json``; None if absent."""
    defense = benchmark["defenses"].get(spec)
    rows = [] if defense is None else defense["rows"]
    return next((row for row in rows if row["Attack"] == attack), None)


def attack_gain(benchmark: dict[str, Any], spec: str, attack: str) -> float | None:
    """``spec``'s Gain (%) on ``attack``; None if absent."""
    row = attack_row(benchmark, spec, attack)
    return None if row is None else row["Gain Score"]


def surviving_uplift(benchmark: dict[str, Any], spec: str, attack: str) -> float | None:
    """``spec``'s score shift (%) on ``attack`` minus its shift on the clean references: the
    attack's uplift that survives purification, without the defense's own smoothing."""
    row = attack_row(benchmark, spec, attack)
    clean = benchmark["defenses"][spec].get("clean") if row is not None else None
    return None if not clean else row["Score shift"] - clean["Score shift"]


def score_table(
    benchmark: dict[str, Any], output_dir: Path, attacks: list[str]
) -> list[dict[str, Any]]:
    """One row per attack of the benchmark: undefended, in-distribution (``all`` weights) and
    held-out (``without-<attack>`` weights) Gain with the shipped knobs, and ``seen_ratio``:
    the held-out weights' Gain over the ``all`` weights' on the other attacks (which both
    trained on), averaged: how far apart two runs are without any held-out attack; and the
    surviving uplift of both weights on the attack, with their ratio when the ``all`` weights'
    is positive."""
    everything = weights_spec(output_dir, ALL)
    benchmarked = {row["Attack"] for row in benchmark["defenses"][everything]["rows"]}
    present = [a for a in attacks if a in benchmarked]
    rows = []
    for attack in present:
        held = weights_spec(output_dir, attack)
        row: dict[str, Any] = {
            "attack": attack,
            "undefended": attack_gain(benchmark, UNDEFENDED, attack),
            "in_distribution": attack_gain(benchmark, everything, attack),
            "held_out": attack_gain(benchmark, held, attack),
        }
        seen = [
            (attack_gain(benchmark, held, other), attack_gain(benchmark, everything, other))
            for other in present
            if other != attack
        ]
        seen = [h / e for h, e in seen if h is not None and e]
        row["seen_ratio"] = round(sum(seen) / len(seen), 2) if seen else None
        row["uplift_in"] = surviving_uplift(benchmark, everything, attack)
        row["uplift_held"] = surviving_uplift(benchmark, held, attack)
        if row["uplift_in"] and row["uplift_in"] > 0 and row["uplift_held"] is not None:
            row["uplift_ratio"] = round(row["uplift_held"] / row["uplift_in"], 2)
        rows.append(with_ratio(row))
    return rows


def score_markdown(rows: list[dict[str, Any]], data_dir: Path, metric: Path) -> str:
    """One ``--score`` table as markdown."""
    lines = [
        f"## Shipped Defense knobs on `{data_dir}` (metric `{metric}`)",
        "",
        "Gain (%) from `scripts/benchmark.py` with `purifier/defaults.json`; weights trained "
        "without an attack are read on that attack only. The last ratio compares the same "
        "weights with the `all` weights on the attacks both trained on: the difference between "
        "two runs that has nothing to do with the held-out attack. Surviving uplift (points "
        "of %) is the attack's score shift minus the same weights' shift on clean references: "
        "the attack left after purification, without the weights' own smoothing, which the "
        "Gain mixes in.",
        "",
        *table_lines(
            rows,
            ["undefended", "in_distribution", "held_out"],
            after=("seen_ratio", "uplift_in", "uplift_held", "uplift_ratio"),
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    check_inputs(args)
    check_finished_runs(args)
    failed = 0 if args.report_only else run_study(args)
    rows = study_table(args.output_dir, args.attacks)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    report = markdown(rows, args)
    for data_dir, metric in args.score:
        benchmark = run_score(args, data_dir, metric)
        if benchmark is None:
            failed += 1
            continue
        table = score_table(benchmark, args.output_dir, args.attacks)
        table_file = score_folder(args.output_dir, data_dir) / "table.json"
        table_file.write_text(json.dumps(table, indent=2) + "\n")
        report += "\n" + score_markdown(table, data_dir, metric)
    (args.output_dir / "report.md").write_text(report)
    (args.output_dir / "report.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(report)
    return 1 if failed else 0

