"""Probe: how much of the attack's perturbation passes through the purifier? (no metric needed)

For an attacked image ``a = r + d`` and its reference ``r`` (both in [0, 1]), purify both with
the same noise (common random numbers) and take the residue ``R = P(a) - P(r)``: what of ``d``
the purifier lets through, with the purifier's own change of ``r`` cancelled. Per image:

- ``leak``      ``<R, d> / <d, d>``: the share of the perturbation that survives in its own
  direction. A metric is close to linear in small perturbations, so the uplift that survives
  purification is about ``leak`` times the undefended uplift.
- ``residue``   ``|R| / |d|``: everything the perturbation changes in the output, relative to it.
- ``hf share``  ``|R - lowpass4(R)|^2 / |R|^2``: the part of the residue finer than 4 px.

No metric is involved, so the figures hold for any metric and for perturbations made against
another one (e.g. ``runs/transfer-set``, attacked against the second stand-in). Each weights
folder runs at each ``t*`` as a fixed noise level (no ramp, no gate) with the shipped knobs
otherwise; image ``i`` gets seed ``seed + i`` for every weights and ``t*``. The default data is
the tuner's set (``clean/train`` crops), never the public one.

    python scripts/leak_probe.py --weights weights/ddpm-v2 runs/bridge-d/ddpm-cand-d \\
        --t-stars 60 100 140 --output runs/leak/leak.md
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atomic_write import write_text_atomic  # noqa: E402
from cli_options import device_name, markdown_report, noise_level, positive_int, run_main  # noqa: E402
from image_io import load_image  # noqa: E402
from paths import ROOT, WEIGHTS_DIR  # noqa: E402
from scripts.benchmarking import harness, select_pairs  # noqa: E402
from scripts.fidelity_probe import fixed_level_purifiers, lowpass  # noqa: E402

FIGURES = ("leak", "residue", "hf_share")
ALL = "All Attacks"


def leaks(
    purified_attacked: torch.Tensor,
    purified_reference: torch.Tensor,
    attacked: torch.Tensor,
    reference: torch.Tensor,
) -> torch.Tensor:
    """``(B,)`` float64: each image's ``leak`` (module doc), from four ``(B, 3, H, W)`` tensors
    in [0, 1] purified with common noise; NaN where an attacked image equals its reference."""
    perturbation = (attacked - reference).double().flatten(1)
    residue = (purified_attacked - purified_reference).double().flatten(1)
    energy = perturbation.pow(2).sum(1)
    return torch.where(energy > 0, (residue * perturbation).sum(1) / energy, torch.nan)


def leak_figures(
    purified_attacked: torch.Tensor,
    purified_reference: torch.Tensor,
    attacked: torch.Tensor,
    reference: torch.Tensor,
) -> dict[str, float]:
    """``leak``, ``residue`` and ``hf_share`` (module doc) of one image: four ``(1, 3, H, W)``
    tensors in [0, 1]. ``ValueError`` if the shapes differ or the attacked image equals its
    reference (no perturbation to measure)."""
    shapes = {tuple(x.shape) for x in (purified_attacked, purified_reference, attacked, reference)}
    if len(shapes) != 1:
        raise ValueError(f"all four images must have one shape, got {sorted(shapes)}")
    perturbation = (attacked - reference).double()
    energy = float(perturbation.pow(2).sum())
    if energy == 0.0:
        raise ValueError("the attacked image equals its reference: no perturbation to measure")
    residue = (purified_attacked - purified_reference).double()
    residue_energy = float(residue.pow(2).sum())
    fine = residue - lowpass(residue, 4)
    return {
        "leak": float(leaks(purified_attacked, purified_reference, attacked, reference)[0]),
        "residue": (residue_energy / energy) ** 0.5,
        "hf_share": float(fine.pow(2).sum()) / residue_energy if residue_energy > 0 else 0.0,
    }


def summarise(rows: Sequence[tuple[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """``[(attack, figures), ...]`` -> ``{attack: mean figures}`` plus ``"All Attacks"``, the
    mean over attacks (each attack weighs the same, as in ``test.py``'s All Attacks row)."""
    if not rows:
        raise ValueError("no images to summarise")
    by_attack: dict[str, dict[str, float]] = {}
    for attack in sorted({a for a, _ in rows}):
        mine = [f for a, f in rows if a == attack]
        by_attack[attack] = {k: sum(f[k] for f in mine) / len(mine) for k in FIGURES}
    by_attack[ALL] = {k: sum(f[k] for f in by_attack.values()) / len(by_attack) for k in FIGURES}
    return by_attack


def markdown(results: dict[str, dict[int, dict[str, dict[str, float]]]], command: str) -> str:
    """The report: one All Attacks row per weights and ``t*``, then the leak per attack."""
    lines = [
        "# Leak probe: the share of the perturbation that passes through the purifier",
        "",
        "Generated by `scripts/leak_probe.py`.",
        "",
        f"- Command: `{command}`",
        "",
        "leak = <P(a) - P(r), a - r> / |a - r|^2 with common noise; residue = |P(a) - P(r)| / "
        "|a - r|; hf share = the residue's energy finer than 4 px. Lower leak and residue: "
        "more of the attack removed.",
        "",
        "| weights | t* | leak | residue | hf share |",
        "|---|---|---|---|---|",
    ]
    for weights, by_t in results.items():
        for t_star, by_attack in by_t.items():
            f = by_attack[ALL]
            lines.append(
                f"| {weights} | {t_star} | {f['leak']:.3f} | {f['residue']:.3f} | "
                f"{f['hf_share']:.2f} |"
            )
    attacks = [a for a in next(iter(next(iter(results.values())).values())) if a != ALL]
    lines += [
        "",
        "## Leak per attack",
        "",
        "| weights | t* | " + " | ".join(attacks) + " |",
        "|---|---|" + "---|" * len(attacks),
    ]
    for weights, by_t in results.items():
        for t_star, by_attack in by_t.items():
            cells = " | ".join(f"{by_attack[a]['leak']:.3f}" for a in attacks)
            lines.append(f"| {weights} | {t_star} | {cells} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT / "runs" / "tuning-set", help="layout dir")
    p.add_argument("--weights", type=Path, nargs="+", default=[WEIGHTS_DIR / "ddpm-v2"])
    p.add_argument("--t-stars", type=noise_level, nargs="+", default=[60, 80])
    p.add_argument("--limit", type=positive_int, default=None, help="images per attack (spread)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--device", type=device_name, default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--output", type=markdown_report, default=None, help="Markdown report (+ .json)")
    args = p.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pairs = select_pairs(harness.collect_pairs(args.data), args.limit)
    results: dict[str, dict[int, dict[str, dict[str, float]]]] = {}
    with torch.no_grad():
        for weights in args.weights:
            rows: dict[int, list[tuple[str, dict[str, float]]]] = {t: [] for t in args.t_stars}
            purifiers = fixed_level_purifiers(weights, args.device, args.t_stars)
            bar = tqdm(pairs, desc=f"leak {weights.name}", disable=args.no_progress)
            for index, pair in enumerate(bar):
                attacked = load_image(pair.attacked).unsqueeze(0).to(args.device)
                reference = load_image(pair.reference).unsqueeze(0).to(args.device)
                if torch.equal(attacked, reference):
                    continue  # nothing to measure (an attack that changed no pixel)
                for t, purifier in purifiers.items():
                    seed = args.seed + index
                    out_a = purifier(attacked, generator=torch.Generator().manual_seed(seed))
                    out_r = purifier(reference, generator=torch.Generator().manual_seed(seed))
                    figures = leak_figures(out_a, out_r, attacked, reference)
                    rows[t].append((pair.attack, figures))
            results[str(weights)] = {t: summarise(r) for t, r in rows.items()}
    command = "python scripts/leak_probe.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = markdown(results, command.strip())
    print(report)
    if args.output is not None:
        write_text_atomic(report, args.output)
        payload: dict[str, Any] = {"command": command.strip(), "results": results}
        write_text_atomic(json.dumps(payload, indent=2) + "\n", args.output.with_suffix(".json"))
    return 0


if __name__ == "__main__":
    run_main(main, "leak_probe.py")
