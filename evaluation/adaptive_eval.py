"""Adaptive white-box attacks on the whole pipeline ``metric(defense(x))`` (issue 6, part 5).

Usage::

    python scripts/adaptive_eval.py [--images runs/public-set/reference] [--limit 8]
        [--crop 192] [--eps 4,10] [--iterations 10] [--eot 4] [--seed 0] [--threads 1]
        [--weights weights/ddpm-v1] [--t-star T] [--steps S] [--metric PATH]
        [--output runs/adaptive/adaptive.md] [--json runs/adaptive/adaptive.json]

For every clean image x (centre-cropped to ``--crop`` px so CPU runs stay feasible) and every
L-inf budget eps, I-FGSM (``attacks`` registry ``ifgsm``: ``--iterations`` sign steps of
``--alpha``, projected on the eps ball; PGD without random start) raises the metric score in
four settings:

- ``undefended``: attack the bare metric, score the attacked image;
- ``non-adaptive``: the same attacked image, purified by the defense, then scored;
- ``adaptive (full)``: attack ``metric(defense(x))`` with gradients through every reverse
  step of the purifier, averaged over ``--eot`` noise draws per step (EOT);
- ``adaptive (BPDA)``: the same with the purifier's backward replaced by the identity
  (Athalye, Carlini and Wagner, ICML 2018), also with EOT.

A ``clean`` row purifies the unattacked image (what the defense alone changes). Gain is
``test.py``'s ``|f(x) - f(out)| / f(x) * 100`` against the clean image's score, averaged over
images. Every purification that is scored uses one evaluation noise draw per image, shared by
all settings. Time is the attack's wall time per image. Target of issue 6: adaptive gain
<= 3x the non-adaptive gain and far below (here: at most half) the undefended gain.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from attacks.adaptive import adaptive_attack
from common.cli_options import device_name, positive_int, report_file
from common.devices import synchronize
from common.image_io import ImageReadError, centre_crop, list_images, load_image
from common.paths import ROOT
from diffusion.precision import PRECISIONS
from evaluation import harness
from evaluation.benchmarking import json_ready, machine_info, spread

logger = logging.getLogger("adaptive_eval")

DEFAULT_IMAGES = ROOT / "runs" / "public-set" / "reference"
ADAPTIVE_LIMIT = 3.0
"""Target: adaptive gain <= this many times the non-adaptive gain."""
FAR_BELOW = 0.5
"""Our reading of "far below the undefended gain": at most this fraction of it."""

CLEAN, UNDEFENDED, NON_ADAPTIVE, FULL, BPDA, EVADE = (
    "clean",
    "undefended",
    "non-adaptive",
    "adaptive (full)",
    "adaptive (BPDA)",
    "adaptive (evade gate)",
)
SETTINGS = (UNDEFENDED, NON_ADAPTIVE, FULL, BPDA)
"""A default run has these (``--adaptive`` picks the adaptive ones); ``EVADE`` is added when
the defense has a detector (a gate or a noise-level ramp)."""
DESCRIPTIONS = {
    CLEAN: "defense on the clean image",
    UNDEFENDED: "attack the bare metric, no defense",
    NON_ADAPTIVE: "attack the bare metric, then defend",
    FULL: "attack metric(defense(x)), full gradients, EOT",
    BPDA: "attack metric(defense(x)), BPDA (identity backward), EOT",
    EVADE: "attack metric(x) - w * relu(detector(x) - gate / 2), then defend",
}

Metric = Callable[[torch.Tensor], torch.Tensor]
Purifier = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Record:
    """One image in one setting: scores ``f(x)``, ``f(out)``, the gain (%) and attack time."""

    image: str
    eps: float
    setting: str
    reference_score: float
    output_score: float
    gain: float
    attack_seconds: float
    linf: float


# --- images ---------------------------------------------------------------------------------


def load_clean_images(
    folder: str | Path, limit: int | None, crop: int
) -> list[tuple[str, torch.Tensor]]:
    """``limit`` evenly spread images of ``folder`` as ``(name, (1, 3, h, w) in [0, 1])``,
    centre-cropped to ``crop`` px (0: whole). ValueError if there is none to use."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if crop < 0:
        raise ValueError(f"crop must be >= 0, got {crop}")
    paths = spread(list_images(folder), limit)
    images = []
    for path in paths:
        try:
            image = load_image(path)
        except ImageReadError as err:
            logger.warning("skipping %s", err)
            continue
        images.append((path.name, centre_crop(image, crop)[None].contiguous()))
    if not images:
        raise ValueError(f"no readable images in {folder}")
    return images


# --- the evaluation -------------------------------------------------------------------------


def generator_for(seed: int, *keys: object) -> torch.Generator:
    """A CPU generator seeded by ``seed`` and ``keys`` (stable across runs and platforms)."""
    text = "/".join(str(k) for k in (seed, *keys))
    value = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1
    return torch.Generator().manual_seed(value)


def score(metric: Metric, images: torch.Tensor) -> float:
    """The metric score of one ``(1, 3, H, W)`` image, without autograd."""
    with torch.no_grad():
        return float(metric(images).reshape(-1)[0])


def evaluate_image(
    name: str,
    image: torch.Tensor,
    metric: Metric,
    purifier: Purifier,
    eps: float,
    *,
    iterations: int,
    alpha: float,
    eot: int,
    seed: int,
    evade_weight: float = 100.0,
    adaptive: Sequence[str] = (FULL, BPDA, EVADE),
) -> list[Record]:
    """The records of one ``(1, 3, H, W)`` image at budget ``eps`` (pixel units in [0, 1]):
    undefended and non-adaptive, then the ``adaptive`` settings asked for (``EVADE`` only
    when the purifier has a detector: the attacker raises the bare metric while pushing the
    detector's estimate below half the gate, so the image would pass unpurified, or, without
    a gate, toward 0, so the noise-level ramp stays at its floor ``t_star``).
    ``purifier(x, generator=...)`` is the defense."""
    reference = score(metric, image)

    def defended(x: torch.Tensor) -> torch.Tensor:  # one shared evaluation draw per image
        with torch.no_grad():
            return purifier(x, generator=generator_for(seed, "eval", name))

    def record(setting: str, out: torch.Tensor, seconds: float, adv: torch.Tensor) -> Record:
        value = score(metric, out)
        return Record(
            image=name,
            eps=eps,
            setting=setting,
            reference_score=reference,
            output_score=value,
            gain=harness.gain_score(reference, value),
            attack_seconds=seconds,
            linf=float((adv - image).abs().max()),
        )

    def attack(
        defense: object | None, mode: str, target: Metric = metric, key: str | None = None
    ) -> tuple[torch.Tensor, float]:
        """I-FGSM on ``target`` (default: the metric) through ``defense`` in ``mode``; the
        attack's noise is keyed by ``key`` (default: the mode, or "bare" without defense)."""
        options = {"eps": eps, "steps": iterations, "alpha": alpha}
        run = adaptive_attack(target, defense, mode, eot_samples=eot, **options)
        key = key or (mode if defense is not None else "bare")
        start = time.perf_counter()
        adv = run(image, generator_for(seed, "attack", name, eps, key))
        synchronize(adv.device)
        return adv, time.perf_counter() - start

    bare, bare_seconds = attack(None, "full")
    records = [
        record(UNDEFENDED, bare, bare_seconds, bare),
        record(NON_ADAPTIVE, defended(bare), bare_seconds, bare),
    ]
    for setting, mode in ((FULL, "full"), (BPDA, "bpda")):
        if setting in adaptive:
            adv, seconds = attack(purifier, mode)
            records.append(record(setting, defended(adv), seconds, adv))
    detector = getattr(purifier, "detector", None)
    if detector is not None and EVADE in adaptive:
        margin = purifier.config.gate / 2

        def evading(x: torch.Tensor) -> torch.Tensor:
            penalty = (detector(x) - margin).clamp_min(0) * evade_weight
            return metric(x) - penalty[:, None]

        evade, seconds = attack(None, "full", target=evading, key="evade")
        with torch.no_grad():
            estimate = float(detector(evade)[0])
        level = purifier.plan(evade)[0]
        logger.info(
            "%s eps %.1f/255: evading image's detector estimate %.2f (gate %g): %s",
            name,
            eps * 255,
            estimate,
            purifier.config.gate,
            f"purified from t={level}" if level else "passes unpurified",
        )
        records.append(record(EVADE, defended(evade), seconds, evade))
    return records


def clean_record(
    name: str, image: torch.Tensor, metric: Metric, purifier: Purifier, seed: int
) -> Record:
    """The ``clean`` record of one image: its purified copy (same evaluation draw)."""
    reference = score(metric, image)
    with torch.no_grad():
        out = purifier(image, generator=generator_for(seed, "eval", name))
    value = score(metric, out)
    gain = harness.gain_score(reference, value)
    return Record(name, 0.0, CLEAN, reference, value, gain, 0.0, 0.0)


def run_evaluation(
    images: Sequence[tuple[str, torch.Tensor]],
    metric: Metric,
    purifier: Purifier,
    eps_values: Sequence[float],
    *,
    iterations: int = 10,
    alpha: float = 1 / 255,
    eot: int = 4,
    seed: int = 0,
    evade_weight: float = 100.0,
    adaptive: Sequence[str] = (FULL, BPDA, EVADE),
    progress: bool = True,
) -> list[Record]:
    """Every record: one ``clean`` per image, then ``SETTINGS`` per image and eps."""
    if not images:
        raise ValueError("no images to attack")
    if not eps_values or any(not 0 < e <= 1 for e in eps_values):
        raise ValueError(f"eps values must lie in (0, 1], got {list(eps_values)}")
    records = [clean_record(n, x, metric, purifier, seed) for n, x in images]
    jobs = [(name, image, eps) for eps in eps_values for name, image in images]
    with tqdm(jobs, desc="adaptive attacks", unit="image", disable=not progress) as bar:
        for name, image, eps in bar:
            bar.set_postfix_str(f"{name} eps={eps * 255:g}/255")
            records += evaluate_image(
                name,
                image,
                metric,
                purifier,
                eps,
                iterations=iterations,
                alpha=alpha,
                eot=eot,
                seed=seed,
                evade_weight=evade_weight,
                adaptive=adaptive,
            )
    return records


def summarize(records: Sequence[Record]) -> list[dict[str, Any]]:
    """One row per (eps, setting): mean gain (NaN-skipping), ratios, attack seconds per image,
    and for the adaptive rows whether the targets of issue 6 are met."""
    rows = []
    keys = list(dict.fromkeys((r.eps, r.setting) for r in records))
    means = {
        key: harness.nan_mean([r.gain for r in records if (r.eps, r.setting) == key])
        for key in keys
    }
    for eps, setting in keys:
        chosen = [r for r in records if (r.eps, r.setting) == (eps, setting)]
        gain = means[(eps, setting)]
        row: dict[str, Any] = {
            "eps": eps,
            "eps_255": round(eps * 255, 6),
            "setting": setting,
            "description": DESCRIPTIONS[setting],
            "images": len(chosen),
            "gain": gain,
            "attack_seconds_per_image": harness.nan_mean([r.attack_seconds for r in chosen]),
            "mean_linf_255": harness.nan_mean([r.linf * 255 for r in chosen]),
        }
        if setting in (FULL, BPDA, EVADE):
            non_adaptive, undefended = means[(eps, NON_ADAPTIVE)], means[(eps, UNDEFENDED)]
            row["x_non_adaptive"] = _ratio(gain, non_adaptive)
            row["x_undefended"] = _ratio(gain, undefended)
            row["within_3x_non_adaptive"] = bool(gain <= ADAPTIVE_LIMIT * non_adaptive)
            row["far_below_undefended"] = bool(gain <= FAR_BELOW * undefended)
        rows.append(row)
    return rows


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


# --- report ---------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    return f"{value:.{digits}f}"


def render_markdown(rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The report: command, settings, one table row per (eps, setting)."""
    header = [
        "eps",
        "Setting",
        "Gain (%)",
        "x non-adaptive",
        "x undefended",
        "Attack s / image",
        "Target",
    ]
    lines = [
        "# Adaptive attacks on metric(defense(x))",
        "",
        "Generated by `scripts/adaptive_eval.py`.",
        "",
        f"- Command: `{meta['command']}`",
        f"- Date: {meta['date']}; wall time {meta['wall_seconds']:.0f} s; "
        f"{meta['machine']['torch_threads']} torch thread(s)",
        f"- Images: {meta['images']} from `{meta['image_dir']}`, crop {meta['crop'] or 'none'}",
        f"- Metric: {meta['metric']}; defense: `{meta['defense']}`",
        f"- Attack: I-FGSM, {meta['iterations']} iterations of {meta['alpha_255']:g}/255, "
        f"EOT {meta['eot']} draws (adaptive rows); seed {meta['seed']}",
        "",
        "Gain = mean |f(x) - f(out)| / f(x) x 100 (`test.py`). Target: adaptive <= "
        f"{ADAPTIVE_LIMIT:g}x non-adaptive and <= {FAR_BELOW:g}x undefended.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for row in rows:
        target = ""
        if "within_3x_non_adaptive" in row:
            marks = [
                ("✅" if row["within_3x_non_adaptive"] else "❌") + " <=3x non-adaptive",
                ("✅" if row["far_below_undefended"] else "❌") + " far below undefended",
            ]
            target = "; ".join(marks)
        eps = "0" if row["setting"] == CLEAN else f"{row['eps_255']:g}/255"
        cells = [
            eps,
            f"{row['setting']}: {row['description']}",
            _fmt(row["gain"]),
            _fmt(row.get("x_non_adaptive")),
            _fmt(row.get("x_undefended")),
            _fmt(row["attack_seconds_per_image"], 3) if row["setting"] != CLEAN else "–",
            target,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --- command line ---------------------------------------------------------------------------


def parse_eps(spec: str) -> list[float]:
    """``"4,10"`` (in 1/255 units) -> ``[4/255, 10/255]``; ValueError for anything else."""
    try:
        values = [float(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        values = []
    if not values or any(not 0 < v <= 255 for v in values):
        raise ValueError(f"--eps takes comma-separated budgets in (0, 255] (x/255), got {spec!r}")
    return [v / 255 for v in values]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--images", type=Path, default=DEFAULT_IMAGES, help="folder of clean images"
    )
    parser.add_argument("--limit", type=int, default=8, help="images used (evenly spread)")
    parser.add_argument("--crop", type=int, default=192, help="centre crop in px (0: whole)")
    parser.add_argument("--eps", default="4,10", help="L-inf budgets in 1/255 units")
    parser.add_argument("--iterations", type=int, default=10, help="attack iterations")
    parser.add_argument("--alpha", type=float, default=1.0, help="step size in 1/255 units")
    parser.add_argument("--eot", type=int, default=4, help="noise draws per adaptive gradient")
    parser.add_argument("--seed", type=int, default=0, help="seed of attack and defense noise")
    parser.add_argument("--weights", type=Path, default=None, help="denoiser folder")
    parser.add_argument("--t-star", type=int, default=None, help="defense noise level")
    parser.add_argument("--steps", type=int, default=None, help="defense reverse steps")
    parser.add_argument("--ensemble", type=int, default=None, help="defense runs averaged")
    parser.add_argument("--gate", type=float, default=None, help="detector gate (0: off)")
    parser.add_argument(
        "--t-star-max", type=int, default=None, help="noise-level ramp's top (0: fixed t_star)"
    )
    parser.add_argument(
        "--strength-ramp", type=float, default=None, help="estimate (1/255) at t_star_max"
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="defense's denoiser arithmetic (default: auto); float32 gives the attacker "
        "gradients without bfloat16 rounding",
    )
    parser.add_argument(
        "--adaptive",
        default="full,bpda,evade",
        help="adaptive settings to run: any of full, bpda, evade (evade needs a detector and is "
        "skipped, with a warning, for a defense without one)",
    )
    parser.add_argument(
        "--evade-weight",
        type=float,
        default=100.0,
        help="score points per 1/255 of detector estimate above gate/2 (evade setting)",
    )
    parser.add_argument(
        "--metric",
        type=Path,
        default=None,
        help="p1q2.pth or a stand-in metric folder (default: MetricModel's default)",
    )
    parser.add_argument("--device", type=device_name, default="cpu")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads")
    parser.add_argument("--output", type=report_file, default=None, help="markdown report")
    parser.add_argument("--json", type=report_file, default=None, help="default: OUTPUT with .json")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("limit", "iterations", "eot"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")
    if args.crop < 0:
        parser.error(f"--crop must be >= 0, got {args.crop}")
    if not 0 < args.alpha <= 255:
        parser.error(f"--alpha must lie in (0, 255] (x/255), got {args.alpha}")
    if not args.evade_weight > 0:
        parser.error(f"--evade-weight must be > 0, got {args.evade_weight}")
    names = {"full": FULL, "bpda": BPDA, "evade": EVADE}
    chosen = [n.strip() for n in args.adaptive.split(",") if n.strip()]
    if not chosen or any(n not in names for n in chosen):
        parser.error(f"--adaptive takes a comma list of {', '.join(names)}, got {args.adaptive!r}")
    args.adaptive_settings = tuple(names[n] for n in chosen)
    try:
        args.eps_values = parse_eps(args.eps)
    except ValueError as err:
        parser.error(str(err))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    try:
        from defense import Defense
        from model import MetricModel

        images = load_clean_images(args.images, args.limit, args.crop)
        device = torch.device(args.device)
        metric = MetricModel(device, args.metric).eval()
        defense = Defense(
            device,
            t_star=args.t_star,
            steps=args.steps,
            ensemble=args.ensemble,
            gate=args.gate,
            t_star_max=args.t_star_max,
            strength_ramp=args.strength_ramp,
            precision=args.precision,
            weights=args.weights,
            seed=args.seed,
        )
        if EVADE in args.adaptive_settings and defense.purifier.detector is None:
            why = "attacks the perturbation detector; this defense uses none (gate and ramp off)"
            if args.adaptive_settings == (EVADE,):
                raise ValueError(f"--adaptive evade {why}")
            logger.warning("skipping evade: it %s", why)
        logger.info("%d images, metric %s, %r", len(images), metric.name, defense)
        with logging_redirect_tqdm():
            records = run_evaluation(
                [(n, x.to(device)) for n, x in images],
                metric,
                defense.purifier,
                args.eps_values,
                iterations=args.iterations,
                alpha=args.alpha / 255,
                eot=args.eot,
                seed=args.seed,
                evade_weight=args.evade_weight,
                adaptive=args.adaptive_settings,
                progress=not args.no_progress,
            )
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"adaptive_eval.py: error: {err}") from err
    rows = summarize(records)
    command = ["python", "scripts/adaptive_eval.py", *(sys.argv[1:] if argv is None else argv)]
    meta = {
        "command": shlex.join(command),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(device),
        "wall_seconds": time.perf_counter() - started,
        "image_dir": str(args.images),
        "images": len(images),
        "image_names": [n for n, _ in images],
        "crop": args.crop,
        "metric": metric.name,
        "defense": repr(defense),
        "defense_config": defense.config.to_dict(),
        "eps_255": [round(e * 255, 6) for e in args.eps_values],
        "iterations": args.iterations,
        "alpha_255": args.alpha,
        "eot": args.eot,
        "seed": args.seed,
        "evade_weight": args.evade_weight,
        "adaptive": list(args.adaptive_settings),
    }
    markdown = render_markdown(rows, meta)
    print(markdown)
    json_path = args.json or (args.output.with_suffix(".json") if args.output else None)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(markdown)
        print(f"wrote {args.output}")
    if json_path:
        report = {"meta": meta, "rows": rows, "records": [asdict(r) for r in records]}
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(json_ready(report), indent=1) + "\n")
        print(f"wrote {json_path}")
    return 0

