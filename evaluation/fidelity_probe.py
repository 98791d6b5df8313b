"""Probe: does pulling the purified image back toward its input (fidelity guidance) help?

Three corrections of the purifier's output ``y`` given its input ``x`` (both in [0, 1]):

- ``blend:L``    ``y + L (x - y)``: the final step of MSE guidance toward the input (GDMP,
  Wang et al., "Guided Diffusion Model for Adversarial Purification", 2022).
- ``lowpass:K``  ``y + up(avgpool_K(x - y))``: take the input's low frequencies (ILVR, Choi et
  al., "ILVR: Conditioning Method for Denoising Diffusion Probabilistic Models", ICCV 2021).
- ``deadzone:T`` ``y + soft(x - y, T/255)``: restore only residuals larger than an L-inf attack
  budget of ``T``/255, which the perturbation alone cannot explain.

With one reverse step (the shipped sampler) the output is the network's predicted ``x_0``, so a
correction of the output is guidance in that step; the ensemble mean is linear, so correcting
the mean equals averaging corrected members (up to clipping). Every image is purified once per
``t*`` with its own seed (common random numbers) and every correction is scored on that same
output, with ``test.py``'s Gain, Quality and SRCC, on the attacked images and on the clean
references. The default data is the tuner's set (``clean/train`` crops), never the public one.

    python scripts/fidelity_probe.py --t-stars 60 80 --output docs/fidelity_probe.md
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from common.atomic_write import write_text_atomic
from common.cli_options import device_name, markdown_report, positive_int
from common.image_io import load_image
from common.paths import ROOT, WEIGHTS_DIR
from evaluation import harness
from evaluation.benchmarking import CLEAN, clean_pairs, score_shift, select_pairs
from purifier import DiffusionPurifier, load_default_config
from purifier.options import noise_level

Correction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
KINDS = ("none", "blend", "lowpass", "deadzone")
DEFAULT_VARIANTS = (
    "none",
    "blend:0.1",
    "blend:0.2",
    "lowpass:4",
    "lowpass:8",
    "lowpass:16",
    "deadzone:6",
    "deadzone:10",
    "deadzone:14",
)


def lowpass(residual: torch.Tensor, factor: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> same shape: average over ``factor`` x ``factor`` cells, upsampled
    back (bilinear), as ILVR's low-pass filter."""
    pooled = F.avg_pool2d(residual, factor, ceil_mode=True)
    return F.interpolate(pooled, size=residual.shape[-2:], mode="bilinear", align_corners=False)


def soft_threshold(residual: torch.Tensor, threshold: float) -> torch.Tensor:
    """Shrink every value toward 0 by ``threshold`` (0 inside ``[-threshold, threshold]``)."""
    return torch.sign(residual) * (residual.abs() - threshold).clamp(min=0.0)


def make_correction(spec: str) -> Correction:
    """``"kind:value"`` (see the module docstring) -> ``f(x, y)`` returning the corrected
    ``(B, 3, H, W)`` image in [0, 1]. ``ValueError`` for an unknown kind or a bad value."""
    kind, _, value = spec.partition(":")
    if kind not in KINDS:
        raise ValueError(f"unknown correction {spec!r}; kinds: {', '.join(KINDS)}")
    if kind == "none":
        if value:
            raise ValueError(f"'none' takes no value, got {spec!r}")
        return lambda x, y: y
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{spec!r}: expected {kind}:<number>") from None
    if kind == "blend":
        if not 0.0 < number <= 1.0:
            raise ValueError(f"{spec!r}: the blend weight must be in (0, 1]")
        return lambda x, y: (y + number * (x - y)).clamp(0.0, 1.0)
    if kind == "lowpass":
        if number != int(number) or number < 2:
            raise ValueError(f"{spec!r}: the low-pass factor must be an integer >= 2")
        return lambda x, y: (y + lowpass(x - y, int(number))).clamp(0.0, 1.0)
    if not 0.0 < number < 255.0:
        raise ValueError(f"{spec!r}: the dead zone must be in (0, 255) (units of 1/255)")
    return lambda x, y: (y + soft_threshold(x - y, number / 255.0)).clamp(0.0, 1.0)


def record(
    attack: str,
    name: str,
    source: float,
    defended: float,
    attacked: float,
    fidelity: tuple[float, float],
) -> harness.ImageRecord:
    """A ``test.py`` record of one corrected image (no timing)."""
    psnr, ssim = fidelity
    return harness.ImageRecord(
        attack=attack,
        name=name,
        source_score=source,
        defense_score=defended,
        attacked_score=attacked,
        psnr=psnr,
        ssim=ssim,
        quality=harness.quality_score(psnr, ssim),
        gain=harness.gain_score(source, defended),
        seconds=0.0,
    )


def summary(records: Sequence[harness.ImageRecord]) -> dict[str, Any]:
    """Gain, Quality, SRCC and bias of attacked records (bias also per attack) plus Gain,
    Quality and bias of clean ones."""
    attacked = [r for r in records if r.attack != CLEAN]
    clean = [r for r in records if r.attack == CLEAN]
    total = harness.aggregate(attacked)[-1]
    clean_total = harness.aggregate(clean)[-1]
    return {
        "gain": total["Gain Score"],
        "quality": total["Quality Score"],
        "srcc": total["SRCC"],
        "bias": score_shift(attacked),
        "clean_gain": clean_total["Gain Score"],
        "clean_quality": clean_total["Quality Score"],
        "clean_bias": score_shift(clean),
        "bias_by_attack": {
            a: score_shift([r for r in attacked if r.attack == a])
            for a in sorted({r.attack for r in attacked})
        },
    }


def markdown(results: dict[int, dict[str, dict[str, Any]]], command: str) -> str:
    """The probe's report: one row per ``t*`` and correction."""
    lines = [
        "# Fidelity guidance probe",
        "",
        "Generated by `scripts/fidelity_probe.py`.",
        "",
        f"- Command: `{command}`",
        "",
        "Bias: mean signed score change (f(def) - f(ref)) / f(ref) x 100 (Gain without the",
        "absolute value). Per-attack biases are in the JSON file beside this report.",
        "",
        "| t* | correction | Gain (%) | Quality | SRCC | bias (%) | clean Gain (%) "
        "| clean Quality | clean bias (%) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t_star, by_variant in results.items():
        for variant, f in by_variant.items():
            lines.append(
                f"| {t_star} | {variant} | {f['gain']:.2f} | {f['quality']:.4f} | "
                f"{f['srcc']:.3f} | {f['bias']:+.2f} | {f['clean_gain']:.2f} | "
                f"{f['clean_quality']:.4f} | {f['clean_bias']:+.2f} |"
            )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT / "runs" / "tuning-set", help="layout dir")
    p.add_argument("--weights", type=Path, default=WEIGHTS_DIR / "ddpm-v2")
    p.add_argument("--t-stars", type=noise_level, nargs="+", default=[60, 80])
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    p.add_argument("--limit", type=positive_int, default=None, help="images per attack (spread)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--device", type=device_name, default="cpu")
    p.add_argument("--output", type=markdown_report, default=None, help="Markdown report (+ .json)")
    args = p.parse_args(argv)
    try:
        args.corrections = {spec: make_correction(spec) for spec in args.variants}
    except ValueError as err:
        p.error(str(err))
    return args


def fixed_level_purifiers(
    weights: Path, device: str | torch.device, t_stars: Sequence[int]
) -> dict[int, DiffusionPurifier]:
    """One purifier per noise level in ``t_stars``: the shipped knobs with the per-image ramp
    and the gate off, so every image (attacked or clean) is purified from that ``t_star``.
    float32, so the probes' small differences (a residue of ~1/255) carry no bfloat16
    rounding and stay comparable across machines and with earlier records."""
    base = load_default_config().replace(t_star_max=0, gate=0.0, precision="float32")
    return {
        t: DiffusionPurifier.from_pretrained(weights, device, base.replace(t_star=t))
        for t in t_stars
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pairs = select_pairs(harness.collect_pairs(args.data), args.limit)
    items = clean_pairs(pairs) + pairs
    metric = harness.load_metric(ROOT, torch.device(args.device))
    purifiers = fixed_level_purifiers(args.weights, args.device, args.t_stars)
    records: dict[int, dict[str, list]] = {
        t: {v: [] for v in args.corrections} for t in args.t_stars
    }
    source_scores: dict[Path, float] = {}
    with torch.no_grad():
        for index, pair in enumerate(tqdm(items, desc="probe")):
            x = load_image(pair.attacked).unsqueeze(0).to(args.device)
            reference = load_image(pair.reference).unsqueeze(0)
            if pair.reference not in source_scores:
                source_scores[pair.reference] = float(metric(reference.to(args.device)))
            source, attacked = source_scores[pair.reference], float(metric(x))
            for t, purifier in purifiers.items():
                generator = torch.Generator().manual_seed(args.seed + index)
                y = purifier(x, generator=generator)
                for variant, correct in args.corrections.items():
                    out = correct(x, y)
                    (fid,) = harness.fidelity(reference, out.cpu())
                    score = float(metric(out))
                    records[t][variant].append(
                        record(pair.attack, pair.attacked.name, source, score, attacked, fid)
                    )
    results = {t: {v: summary(r) for v, r in by_v.items()} for t, by_v in records.items()}
    command = "python scripts/fidelity_probe.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = markdown(results, command.strip())
    print(report)
    if args.output is not None:
        write_text_atomic(report, args.output)
        write_text_atomic(json.dumps(results, indent=2) + "\n", args.output.with_suffix(".json"))
    return 0

