"""Benchmark reports: the targets of issue 5, ``BENCHMARKS.md`` and the JSON record."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from defenses.registry import CLASSICAL, defense_names
from evaluation import harness
from evaluation.benchmarking import SCORE_SHIFT, TIME_RATIO, DefenseRun, json_ready
from evaluation.harness import ImageRecord
from evaluation.peak_memory import memory_markdown

# Targets of issue 5.
GAIN_MAX = 3.0
GAIN_FRACTION_OF_BEST_CLASSICAL = 1.0 / 3.0
SRCC_MIN = 0.97
CLEAN_GAIN_MAX = 2.0
TIME_MAX = 1.0
TIME_GOAL = 0.5


@dataclass(frozen=True)
class TargetCheck:
    """One target of issue 5 for one defense: ``value`` against ``threshold``."""

    target: str
    value: float
    threshold: float
    passed: bool
    note: str = ""


def check_targets(runs: Mapping[str, DefenseRun], name: str) -> list[TargetCheck]:
    """The issue-5 targets for ``runs[name]``, compared with the other defenses on the same
    images (a subset run is compared with the others restricted to its subset)."""
    run = runs[name]
    keys = run.pair_keys()
    same = {n: r.restricted(keys) for n, r in runs.items() if keys <= r.pair_keys()}
    total, clean = run.total(), run.clean_row()
    classical = {n: same[n].total()["Gain Score"] for n in defense_names(CLASSICAL) if n in same}
    if classical:
        best = min(classical, key=classical.get)  # type: ignore[arg-type]
        gain_limit = min(GAIN_MAX, classical[best] * GAIN_FRACTION_OF_BEST_CLASSICAL)
        gain_note = f"min(3 %, {best} {classical[best]:.2f} / 3)"
    else:
        gain_limit, gain_note = GAIN_MAX, "3 % (no classical defense run)"
    checks = [
        _check("Gain (%)", total["Gain Score"], gain_limit, below=True, note=gain_note),
    ]
    if "none" in same:
        undefended = same["none"].total()["Quality Score"]
        checks.append(
            _check("Quality", total["Quality Score"], undefended, below=False, note="undefended")
        )
    else:
        checks.append(
            TargetCheck("Quality", total["Quality Score"], math.nan, False, "no none run")
        )
    checks += [
        _check("SRCC", total["SRCC"], SRCC_MIN, below=False),
        _check("Clean gain (%)", clean["Gain Score"], CLEAN_GAIN_MAX, below=True),
        _check(
            "Time / Linearity",
            total[TIME_RATIO],
            TIME_MAX,
            below=True,
            note="goal 0.5x met" if total[TIME_RATIO] <= TIME_GOAL else "goal 0.5x not met",
        ),
    ]
    return checks


def _check(target: str, value: float, threshold: float, below: bool, note: str = "") -> TargetCheck:
    passed = bool(value <= threshold) if below else bool(value >= threshold)
    return TargetCheck(
        target, float(value), float(threshold), passed and math.isfinite(value), note
    )


# --- markdown and JSON ----------------------------------------------------------------------


def _fmt(value: Any, digits: int) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}"


SUMMARY_COLUMNS = (
    ("Gain (%) ↓", "Gain Score", 2),
    ("Quality ↑", "Quality Score", 4),
    ("SRCC ↑", "SRCC", 4),
    ("Shift (%)", SCORE_SHIFT, 2),
)
PER_ATTACK_TABLES = (
    ("Gain (%), lower is better", "Gain Score", 2),
    ("Quality, higher is better", "Quality Score", 4),
    ("SRCC, higher is better", "SRCC", 4),
    ("Score shift (%), signed: attack left in place (+) or smoothing (-)", SCORE_SHIFT, 2),
    ("Time per image / one Linearity forward", TIME_RATIO, 3),
)


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def column_name(run: DefenseRun) -> str:
    return f"{run.name}*" if run.subset is not None else run.name


def summary_table(runs: Mapping[str, DefenseRun]) -> list[str]:
    header = ["Defense", "Images"] + [c for c, _, _ in SUMMARY_COLUMNS]
    header += [
        "Clean gain (%) ↓",
        "Clean shift (%)",
        "Clean quality ↑",
        "Time / Linearity ↓",
        "s / image",
    ]
    rows = []
    for run in runs.values():
        total, clean = run.total(), run.clean_row()
        cells = [f"{column_name(run)}: {run.label}", str(len(run.records))]
        cells += [_fmt(total[key], digits) for _, key, digits in SUMMARY_COLUMNS]
        cells += [
            _fmt(clean["Gain Score"], 2),
            _fmt(clean[SCORE_SHIFT], 2),
            _fmt(clean["Quality Score"], 4),
            _fmt(total[TIME_RATIO], 3),
            _fmt(total[harness.TIME_COLUMN], 3),
        ]
        rows.append(cells)
    return _table(header, rows)


BASELINE = "resize"
"""The competition's baseline: resize x0.5, returned at half size (``defenses.ResizeDefense``)."""


DIFFERENCE_DIGITS = {"Gain vs baseline": 2, "Quality vs baseline": 4, "SRCC vs baseline": 4}


def _signed(value: float, column: str) -> str:
    """A difference from the baseline with its sign (``n/a`` for NaN)."""
    return "n/a" if math.isnan(value) else f"{value:+.{DIFFERENCE_DIGITS[column]}f}"


def _against(run: DefenseRun, baseline: DefenseRun) -> list[dict[str, Any]]:
    """``harness.baseline_differences`` of ``run`` against ``baseline`` on ``run``'s images."""
    return harness.baseline_differences(run.rows(), baseline.restricted(run.pair_keys()).rows())


def baseline_summary_table(
    runs: Mapping[str, DefenseRun], baseline: str = BASELINE
) -> list[str]:
    """All Attacks: each defense's Gain, Quality and SRCC minus the baseline's (positive =
    better, as the competition ranks), beside the absolute figures, and how many of the
    three it wins."""
    if baseline not in runs:
        return [f"(the baseline `{baseline}` was not run)"]
    base = runs[baseline]
    header = ["Defense", "Gain vs baseline ↑", "Quality vs baseline ↑", "SRCC vs baseline ↑"]
    header += ["Wins", "Gain (%)", "Quality", "SRCC"]
    rows = []
    for name, run in runs.items():
        if name == baseline:
            continue
        diff = _against(run, base)[-1]
        columns = list(harness.BASELINE_DIFFERENCES)
        wins = sum(1 for column in columns if diff[column] > 0)
        total = run.total()
        cells = [column_name(run)] + [_signed(diff[column], column) for column in columns]
        cells += [f"{wins}/3", _fmt(total["Gain Score"], 2)]
        cells += [_fmt(total["Quality Score"], 4), _fmt(total["SRCC"], 4)]
        rows.append(cells)
    total = base.total()
    rows.append(
        [f"{baseline} (the baseline)", "0", "0", "0", "–", _fmt(total["Gain Score"], 2)]
        + [_fmt(total["Quality Score"], 4), _fmt(total["SRCC"], 4)]
    )
    return _table(header, rows)


def baseline_per_attack_tables(
    runs: Mapping[str, DefenseRun], baseline: str = BASELINE
) -> list[str]:
    """Per attack, one table per metric: each defense minus the baseline (positive = better)."""
    if baseline not in runs:
        return []
    others = [n for n in runs if n != baseline]
    diffs = {
        n: {row["Attack"]: row for row in _against(runs[n], runs[baseline])} for n in others
    }
    attacks = sorted({r.attack for n in others for r in runs[n].records})
    lines = []
    for column in harness.BASELINE_DIFFERENCES:
        lines += ["", f"### {column} (positive = better)", ""]
        rows = []
        for attack in [*attacks, harness.ALL_ATTACKS]:
            cells = [attack]
            for name in others:
                row = diffs[name].get(attack)
                cells.append(_signed(row[column] if row else math.nan, column))
            rows.append(cells)
        lines += _table(["Attack", *(column_name(runs[n]) for n in others)], rows)
    return lines


def targets_table(runs: Mapping[str, DefenseRun]) -> list[str]:
    names = [n for n in runs if n != "none"]
    if not names:
        return ["(no defense besides none was run)"]
    checks = {n: check_targets(runs, n) for n in names}
    header = ["Defense"] + [c.target for c in checks[names[0]]]
    rows = []
    for name in names:
        cells = [column_name(runs[name])]
        for c in checks[name]:
            mark = "✅" if c.passed else "❌"
            note = f"; {c.note}" if c.note else ""
            cells.append(f"{mark} {_fmt(c.value, 3)} (limit {_fmt(c.threshold, 3)}{note})")
        rows.append(cells)
    return _table(header, rows)


def per_attack_tables(runs: Mapping[str, DefenseRun]) -> list[str]:
    attacks = sorted({r.attack for run in runs.values() for r in run.records})
    rows_by_run = {n: {row["Attack"]: row for row in run.rows()} for n, run in runs.items()}
    lines = []
    for title, key, digits in PER_ATTACK_TABLES:
        lines += ["", f"### {title}", ""]
        header = ["Attack"] + [column_name(run) for run in runs.values()]
        rows = []
        for attack in [*attacks, harness.ALL_ATTACKS]:
            cells = [attack]
            for name in runs:
                row = rows_by_run[name].get(attack)
                cells.append(_fmt(row[key], digits) if row else "–")
            rows.append(cells)
        lines += _table(header, rows)
    return lines


def short_description(description: str) -> str:
    """``description`` with a long ``timesteps=[...]`` list cut to its ends and length."""

    def cut(match: re.Match) -> str:
        steps = match.group(1).split(", ")
        if len(steps) <= 6:
            return match.group(0)
        return f"timesteps=[{', '.join(steps[:3])}, ..., {steps[-1]}] ({len(steps)} steps)"

    return re.sub(r"timesteps=\[([0-9, ]*)\]", cut, description)


def _bfloat16_note(machine: Mapping[str, Any], device: str = "cpu") -> str:
    """``", CPU with native bfloat16"`` (what ``precision="auto"`` uses; "GPU" for a CUDA
    ``device``) or ``", CPU without native bfloat16"``; empty for records made before the
    field existed."""
    if "native_bfloat16" not in machine:
        return ""
    kind = "GPU" if str(device).startswith("cuda") else "CPU"
    return f", {kind} {'with' if machine['native_bfloat16'] else 'without'} native bfloat16"


def judges_section(judges: Mapping[str, Mapping[str, DefenseRun]]) -> list[str]:
    """For each other judge (label -> its runs): the differences from the baseline and the
    absolute figures, All Attacks."""
    lines = []
    for label, runs in judges.items():
        lines += ["", f"### Judge: {label}", "", *baseline_summary_table(runs)]
    return lines


def render_markdown(
    runs: Mapping[str, DefenseRun],
    meta: Mapping[str, Any],
    grid: str | None = None,
    judges: Mapping[str, Mapping[str, DefenseRun]] | None = None,
) -> str:
    """``BENCHMARKS.md``: command, date, machine, the differences from the baseline (under
    every judge), summary, targets, per-attack tables."""
    machine = meta["machine"]
    bfloat16 = _bfloat16_note(machine, meta["device"])
    timing = ", ".join(f"{k}: {v:.3f} s" for k, v in meta["linearity_seconds"].items())
    lines = [
        "# Benchmarks",
        "",
        "Generated by `scripts/benchmark.py`; do not edit by hand.",
        "",
        f"- Command: `{meta['command']}`",
        f"- Date: {meta['date']}",
        f"- Machine: {machine['cores']} cores ({machine['processor']}), "
        f"{machine['torch_threads']} torch threads, {machine['platform']}, "
        f"torch {machine['torch']}, device {meta['device']}{bfloat16}",
        f"- Data: `{meta['data_dir']}`: {meta['attacks']} attacks, "
        f"{meta['images_per_attack']} images per attack; metric: {meta['metric']}",
        f"- Seed {meta['seed']}; batch size {meta['batch_size']}; "
        f"one Linearity forward (ResNeXt-101 32x8d, batch 1): {timing}",
    ]
    if "ddpm" in runs and "ddpm_knobs" in meta:
        lines.append(f"- `ddpm` knobs from: {meta['ddpm_knobs']}")
    subset_runs = [run for run in runs.values() if run.subset is not None]
    for run in subset_runs:
        lines.append(
            f"- `{run.name}*` ran on a subset: {run.subset} image(s) per attack "
            f"({len(run.records)} images); see the subset table below."
        )
    lines += [
        "",
        "Gain = |f(ref) - f(def)| / f(ref) x 100 and Quality = (SSIM + PSNR/80) / 2 as in "
        "`test.py`; SRCC is per attack, averaged. Shift = the mean of (f(def) - f(ref)) / "
        "f(ref) x 100, the Gain with its sign: attacked minus clean shift is the uplift that "
        "survives purification. Clean columns: the clean references through the defense. "
        "Time: seconds per image over one Linearity forward on the same image size, measured "
        "in this run.",
        "",
        "## Against the competition's baseline",
        "",
        "The competition ranks a defense by its difference from the baseline on each of Gain, "
        f"Quality and SRCC. The baseline is `{BASELINE}`: resize x0.5 (bilinear, antialiased), "
        "returned at half size and scored as returned (PSNR/SSIM resize it back). Differences "
        "are signed so that positive is better: baseline Gain minus the defense's; the "
        "defense's Quality and SRCC minus the baseline's.",
        "",
        f"### Judge: {meta['metric']} on `{meta['data_dir']}`",
        "",
        *baseline_summary_table(runs),
        *baseline_per_attack_tables(runs),
        *judges_section(judges or {}),
        "",
        "## All attacks",
        "",
        *summary_table(runs),
        "",
        "## Targets of issue 5",
        "",
        "Gain <= min(3 %, best classical / 3); Quality >= undefended attacked Quality; "
        "SRCC >= 0.97; clean-input gain <= 2 %; time <= 1x Linearity (goal 0.5x). "
        "Each defense is compared with the others on the same images.",
        "",
        *targets_table(runs),
    ]
    for run in subset_runs:
        keys = run.pair_keys()
        same = {n: r.restricted(keys) for n, r in runs.items() if keys <= r.pair_keys()}
        lines += [
            "",
            f"## On the subset of `{run.name}` ({run.subset} image(s) per attack)",
            "",
            *summary_table(same),
        ]
    lines += ["", "## Per attack", *per_attack_tables(runs), ""]
    if grid:
        lines += [
            "## Examples",
            "",
            f"![reference, attacked and each defense's output]({grid})",
            "",
        ]
    if meta.get("memory"):
        lines += [*memory_markdown(meta["memory"]), ""]
    lines += ["Descriptions:", ""]
    lines += [f"- `{run.name}`: `{short_description(run.description)}`" for run in runs.values()]
    return "\n".join(lines) + "\n"


def to_json(runs: Mapping[str, DefenseRun], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Everything: meta, per-defense rows (with ``TIME_RATIO``), clean row, targets, records."""
    defenses = {}
    for name, run in runs.items():
        defenses[name] = {
            "label": run.label,
            "description": run.description,
            "subset": run.subset,
            "rows": run.rows(),
            "clean": run.clean_row(),
            "targets": [dataclasses.asdict(c) for c in check_targets(runs, name)]
            if name != "none"
            else [],
            "records": [
                {**dataclasses.asdict(r), "time_ratio": t}
                for r, t in zip(run.records, run.ratios, strict=True)
            ],
            "clean_records": [
                {**dataclasses.asdict(r), "time_ratio": t}
                for r, t in zip(run.clean_records, run.clean_ratios, strict=True)
            ],
        }
    return json_ready({"meta": dict(meta), "defenses": defenses})


def records_from_json(items: Iterable[Mapping[str, Any]]) -> list[Any]:
    """``ImageRecord`` objects back from ``to_json`` records (``None`` read as NaN)."""
    fields = [f.name for f in dataclasses.fields(ImageRecord)]
    return [
        ImageRecord(**{k: (math.nan if item[k] is None else item[k]) for k in fields})
        for item in items
    ]
