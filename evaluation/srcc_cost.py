"""What costs a defense SRCC: the defense's own change of clean images, or the uplift it lets
through? Read off a ``benchmark.py`` run's ``benchmark.json`` (no image is purified again).

Per judge (the run's metric and each ``--judge``), defense and attack, from the per-image
records of the attacked images and of the clean references through the same defense:

- ``srcc``         SRCC between f(reference) and f(defended attacked image): what the harness
  scores.
- ``clean srcc``   SRCC between f(reference) and f(defended reference): the ranking the defense
  keeps when there is no attack; its gap to 1 is what the defense's own, content-dependent
  change of the picture costs.
- ``residual``     mean of f(defended attacked) / f(defended reference) - 1, in %: the uplift
  that survives the defense, measured against the defense's output on the clean picture so
  that the defense's own shift cancels; ``sd`` its spread over images.
- ``rho(uplift)``  Spearman correlation of that residual with the undefended uplift
  f(attacked) / f(reference) - 1: near 1 when the images the attack moved most keep most.

When ``clean srcc`` stays high and ``srcc`` drops, the ranking is scrambled by the surviving
uplift, which differs from image to image, not by the defense's treatment of the picture.

    python scripts/srcc_cost.py runs/explore36-v2/benchmark.json [--defenses ddpm,resize]
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.harness import srcc

COLUMNS = ("attack", "images", "srcc", "clean srcc", "residual %", "sd %", "rho(uplift)")


def srcc_cost_rows(defense: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per-attack rows (``COLUMNS``) of one defense's entry in ``benchmark.json`` (its
    ``records`` and ``clean_records``), attacks sorted, then ``All Attacks`` (SRCCs averaged
    over attacks as the harness does; residual over all images). ``ValueError`` when the entry
    has no clean records or an attacked image has no clean counterpart."""
    clean = {r["name"]: r for r in defense.get("clean_records") or []}
    if not clean:
        raise ValueError("the benchmark entry has no clean_records: re-run benchmark.py")
    by_attack: dict[str, list[Mapping[str, Any]]] = {}
    for record in defense["records"]:
        if record["name"] not in clean:
            raise ValueError(f"{record['attack']}/{record['name']} has no clean record")
        by_attack.setdefault(record["attack"], []).append(record)
    rows, residuals = [], []
    for attack in sorted(by_attack):
        records = by_attack[attack]
        source = [r["source_score"] for r in records]
        defended_clean = [clean[r["name"]]["defense_score"] for r in records]
        residual = [
            100 * (r["defense_score"] / c - 1) for r, c in zip(records, defended_clean, strict=True)
        ]
        uplift = [r["attacked_score"] / r["source_score"] - 1 for r in records]
        residuals += residual
        rows.append(
            {
                "attack": attack,
                "images": len(records),
                "srcc": srcc(source, [r["defense_score"] for r in records]),
                "clean srcc": srcc(source, defended_clean),
                "residual %": float(np.mean(residual)),
                "sd %": float(np.std(residual)),
                "rho(uplift)": srcc(residual, uplift),
            }
        )
    rows.append(
        {
            "attack": "All Attacks",
            "images": sum(r["images"] for r in rows),
            "srcc": float(np.mean([r["srcc"] for r in rows])),
            "clean srcc": rows[0]["clean srcc"] if rows else math.nan,
            "residual %": float(np.mean(residuals)) if residuals else math.nan,
            "sd %": float(np.std(residuals)) if residuals else math.nan,
            "rho(uplift)": float(np.mean([r["rho(uplift)"] for r in rows])),
        }
    )
    return rows


def judges(benchmark: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """``{judge label: {defense: entry}}``: the run's own metric first, then each judge."""
    meta = benchmark.get("meta") or {}
    own = str(meta.get("metric") or "the run's metric")
    return {own: benchmark["defenses"], **(benchmark.get("judges") or {})}


def _cells(row: Mapping[str, Any]) -> list[str]:
    return [
        str(row["images"]),
        f"{row['srcc']:.3f}",
        f"{row['clean srcc']:.3f}",
        f"{row['residual %']:+.1f}",
        f"{row['sd %']:.1f}",
        f"{row['rho(uplift)']:+.2f}",
    ]


def markdown(benchmark: Mapping[str, Any], defenses: Sequence[str] | None = None) -> str:
    """The report: a summary (All Attacks, every judge and defense), then a table per judge
    and defense. ``ValueError`` for a defense the run does not have."""
    tables = {}
    for judge, entries in judges(benchmark).items():
        for name in defenses or list(entries):
            if name not in entries:
                raise ValueError(f"no defense {name!r} under {judge}; have {sorted(entries)}")
            tables[judge, name] = srcc_cost_rows(entries[name])
    header = ("judge", "defense", *COLUMNS[1:])
    lines = ["# What costs SRCC", "", "## All Attacks", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "---|" * len(header))
    for (judge, name), rows in tables.items():
        lines.append("| " + " | ".join([judge, name, *_cells(rows[-1])]) + " |")
    lines.append("")
    for (judge, name), rows in tables.items():
        lines += [f"## {name} under {judge}", "", "| " + " | ".join(COLUMNS) + " |"]
        lines.append("|" + "---|" * len(COLUMNS))
        lines += ["| " + " | ".join([row["attack"], *_cells(row)]) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("benchmark", type=Path, help="a benchmark.py run's benchmark.json")
    parser.add_argument("--defenses", default=None, help="comma-separated (default: all)")
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        benchmark = json.loads(args.benchmark.read_text())
        chosen = [d for d in args.defenses.split(",") if d] if args.defenses else None
        text = markdown(benchmark, chosen)
    except (OSError, json.JSONDecodeError, KeyError, ValueError) as err:
        raise SystemExit(f"srcc_cost.py: error: {err}") from err
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    return 0
