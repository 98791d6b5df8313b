"""Train the perturbation detector that gates purification (``purifier.PerturbationDetector``).

Two phases, both resumable:

1. **Attacked crops.** Random crops of ``clean/train`` (minus the tuning images and a held-out
   set) are attacked by the attack suite against the stand-in metric with random attacks,
   budgets (``--eps-range``), iterations and EOT (``attacks.RandomAttacks``), rounded to 8 bits
   as a saved PNG would be, and written as shards under ``<run-dir>/shards`` (finished shards
   are skipped on a rerun). The held-out images give the validation shards.
2. **Regression.** The network learns the RMS of the perturbation (1/255 units) of attacked
   crops and 0 for natural ones: the clean crops, crops of CLIVE's train split (authentic
   camera distortions) and JPEG-compressed copies of both (quality 30-95, so codec output is
   not taken for an attack). Loss: squared error of ``log1p`` of the strengths. Checkpoints
   every ``--checkpoint-every`` steps (``--resume latest``). With ``--weaken-prob`` a share
   of the attacked crops has its perturbation scaled down (log-uniform factor in
   [``--weaken-floor``, 1]) and, a share ``--weaken-mask`` of those, masked to textured areas
   by the Sobel activity map (as perceptually masked attacks such as Korhonen's are), then
   rounded to 8 bits again: the suite's random draws are mostly far stronger than such attacks.

At the end the held-out report (clean estimates by source, attacked estimates by attack, the
detection and false-alarm rates at several gates) is logged and written into the manifest.

    python scripts/train_detector.py --output weights/detector-v1 --threads 1
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from einops import rearrange
from safetensors import safe_open
from tqdm import tqdm

from attacks.korhonen import spatial_activity_map
from attacks.registry import ATTACKS
from attacks.training_pairs import RandomAttacks
from common import paths
from common.atomic_write import save_tensors
from common.cli_options import device_name, positive_float, positive_int
from common.image_io import as_uint8, list_images, load_images_uint8, random_window
from defenses.classical import JpegDefense
from evaluation.detector import summarize
from evaluation.tuning import TUNING_IMAGES
from metrics.clive_data import carve_validation, read_mos_csv
from model import MetricModel
from purifier.perturbation_detector import PerturbationDetector, save_detector
from training.ddpm import holdout_split
from training.denoiser_run import (
    CHECKPOINT_DIR,
    TrainingProgress,
    check_output_free,
    checkpoints_oldest_first,
    latest_checkpoint,
    run_script,
    setup_logging,
)

logger = logging.getLogger("train_detector")
SHARD_DIR = "shards"
REPORT_GATES = (0.5, 0.75, 1.0, 1.5, 2.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=paths.default_data_dir())
    p.add_argument("--output", type=Path, default=paths.WEIGHTS_DIR / "detector-v1")
    p.add_argument("--run-dir", type=Path, default=None, help="shards, checkpoints, log")
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
    p.add_argument("--metric-checkpoint", default=None, help="metric to attack (stand-in)")
    p.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=list(ATTACKS))
    p.add_argument("--eps-range", type=float, nargs=2, default=(1.0, 16.0), help="in 1/255")
    p.add_argument("--shards", type=int, default=96, help="training shards of attacked crops")
    p.add_argument("--val-shards", type=int, default=16)
    p.add_argument("--shard-size", type=int, default=24, help="crops per shard (one attack)")
    p.add_argument("--crop", type=int, default=128, help="side of the attacked crops")
    p.add_argument("--train-crop", type=int, default=64, help="random sub-crop for training")
    p.add_argument("--holdout", type=int, default=24, help="clean/train images for validation")
    p.add_argument("--clive-images", type=int, default=400, help="CLIVE train images as negatives")
    p.add_argument("--jpeg-prob", type=float, default=0.3)
    p.add_argument(
        "--weaken-prob", type=float, default=0.0, help="share of attacked crops made weaker"
    )
    p.add_argument(
        "--weaken-floor", type=float, default=1 / 16, help="smallest perturbation scale, (0, 1]"
    )
    p.add_argument(
        "--weaken-mask", type=float, default=0.5, help="share of weakened crops also masked"
    )
    p.add_argument("--steps", type=positive_int, default=3000)
    p.add_argument("--batch-size", type=int, default=32, help="half attacked, half natural")
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--checkpoint-every", type=positive_int, default=500)
    p.add_argument("--max-minutes", type=positive_float, default=None, help="stop training early")
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument(
        "--device", type=device_name, default="cpu", help="where the metric is attacked and trained"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.run_dir is None:
        args.run_dir = paths.ROOT / "runs" / args.output.name
    if not 0 < args.eps_range[0] <= args.eps_range[1] <= 255:
        p.error(f"--eps-range must satisfy 0 < low <= high <= 255, got {args.eps_range}")
    if not 8 <= args.train_crop <= args.crop:
        p.error(f"--train-crop must be in 8..--crop ({args.crop}), got {args.train_crop}")
    for name in ("shards", "val_shards", "shard_size", "crop", "steps", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 <= args.jpeg_prob <= 1:
        p.error(f"--jpeg-prob must be in [0, 1], got {args.jpeg_prob}")
    if not 0 <= args.weaken_prob <= 1:
        p.error(f"--weaken-prob must be in [0, 1], got {args.weaken_prob}")
    if not 0 <= args.weaken_mask <= 1:
        p.error(f"--weaken-mask must be in [0, 1], got {args.weaken_mask}")
    if not 0 < args.weaken_floor <= 1:
        p.error(f"--weaken-floor must be in (0, 1], got {args.weaken_floor}")
    return args


def random_crops(
    images: list[torch.Tensor], count: int, size: int, generator: torch.Generator
) -> torch.Tensor:
    """``(count, 3, size, size)`` uint8 crops of random images at random places."""
    crops = []
    for _ in range(count):
        image = images[int(torch.randint(len(images), (), generator=generator))]
        top, left = random_window(image, size, generator)
        crops.append(image[:, top : top + size, left : left + size])
    return torch.stack(crops)


def strength(clean: torch.Tensor, attacked: torch.Tensor) -> torch.Tensor:
    """RMS of ``attacked - clean`` per image in 1/255 units, ``(B,)``; both ``(B, 3, H, W)``
    uint8 (or float in [0, 255])."""
    return (attacked.float() - clean.float()).square().mean((1, 2, 3)).sqrt()


def jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG round trip (``defenses.JpegDefense``) of ``(B, 3, H, W)`` uint8 images -> uint8."""
    return as_uint8(JpegDefense(quality=quality).purify(images.float() / 255))


def make_shards(
    folder: Path,
    count: int,
    sources: list[torch.Tensor],
    attacks: RandomAttacks,
    args: argparse.Namespace,
    seed: int,
) -> None:
    """Write ``count`` shards (``clean``/``attacked`` uint8 crops of one random attack) into
    ``folder``, skipping finished ones; shard ``i`` depends only on ``seed`` and ``i``."""
    folder.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(count) if not (folder / f"shard_{i:04d}.safetensors").is_file()]
    for i in tqdm(todo, desc=f"attacking crops ({folder.name})", mininterval=10):
        generator = torch.Generator().manual_seed(seed * 100_003 + i)
        clean = random_crops(sources, args.shard_size, args.crop, generator)
        attacked, name = attacks.attack(clean.to(args.device).float() / 255, generator)
        tensors = {"clean": clean, "attacked": as_uint8(attacked.cpu())}
        save_tensors(tensors, folder / f"shard_{i:04d}.safetensors", metadata={"attack": name})


def read_shards(folder: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """All shards of ``folder``: ``(clean, attacked, attack name per crop)``, uint8 tensors."""
    clean, attacked, names = [], [], []
    for path in sorted(folder.glob("shard_*.safetensors")):
        with safe_open(path, "pt") as handle:  # one read: tensors and metadata
            name = handle.metadata()["attack"]
            clean.append(handle.get_tensor("clean"))
            attacked.append(handle.get_tensor("attacked"))
        names += [name] * len(clean[-1])
    return torch.cat(clean), torch.cat(attacked), names


def augment(batch: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """One random ``size x size`` window, rotation by 90 degrees and flip for the whole
    ``(B, C, S, S)`` batch (stack pairs along ``C`` to transform them alike)."""
    top, left = random_window(batch, size, generator)
    batch = batch[..., top : top + size, left : left + size]
    batch = torch.rot90(batch, int(torch.randint(4, (), generator=generator)), dims=(2, 3))
    return batch.flip(-1) if int(torch.randint(2, (), generator=generator)) else batch


def natural_batch(
    pools: list[torch.Tensor], count: int, args: argparse.Namespace, generator: torch.Generator
) -> torch.Tensor:
    """``count`` uint8 natural crops drawn evenly from the given crop pools (with
    replacement), all JPEG-compressed with probability ``args.jpeg_prob``."""
    picks = []
    for i in range(count):
        pool = pools[i % len(pools)]
        picks.append(pool[int(torch.randint(len(pool), (), generator=generator))])
    batch = torch.stack(picks)
    if float(torch.rand((), generator=generator)) < args.jpeg_prob:
        batch = jpeg(batch, int(torch.randint(30, 96, (), generator=generator)))
    return batch


def weaken(
    clean: torch.Tensor,
    attacked: torch.Tensor,
    probability: float,
    floor: float,
    generator: torch.Generator,
    mask_share: float = 0.5,
) -> torch.Tensor:
    """Weaker attacked crops: ``(B, 3, S, S)`` uint8 pairs -> ``(B, 3, S, S)`` uint8.

    Each crop is chosen with ``probability``; a chosen crop's perturbation is multiplied by a
    log-uniform factor in ``[floor, 1]`` and, with probability ``mask_share``, by the clean crop's
    spatial activity map (``attacks.korhonen.spatial_activity_map``, in [0, 1]), then the
    result is rounded to 8 bits. Crops not chosen are returned unchanged; ``probability`` 0
    draws nothing from ``generator``.
    """
    if probability <= 0:
        return attacked
    count = len(clean)
    chosen = torch.rand(count, generator=generator) < probability
    scale = floor ** torch.rand(count, generator=generator)
    masked = chosen & (torch.rand(count, generator=generator) < mask_share)
    base = clean.float()
    factor = torch.where(chosen, scale, torch.ones(count))
    factor = rearrange(factor, "b -> b 1 1 1")
    if masked.any():
        activity = spatial_activity_map(base / 255)
        factor = factor * torch.where(rearrange(masked, "b -> b 1 1 1"), activity, 1.0)
    return as_uint8((base + factor * (attacked.float() - base)) / 255)


def log_strength_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of ``log1p`` of the strengths (both ``(B,)``, >= 0)."""
    return (torch.log1p(predicted) - torch.log1p(target)).square().mean()


@torch.no_grad()
def estimates(model: PerturbationDetector, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """``(N,)`` strengths of ``(N, 3, S, S)`` uint8 crops."""
    model.eval()
    device = next(model.parameters()).device
    parts = [
        model(images[i : i + batch].to(device).float() / 255).cpu()
        for i in range(0, len(images), batch)
    ]
    return torch.cat(parts)


def held_out_report(
    model: PerturbationDetector,
    clean: torch.Tensor,
    attacked: torch.Tensor,
    names: list[str],
    clive: torch.Tensor,
) -> dict[str, Any]:
    """Held-out estimates: quantiles per natural source and per attack, and the share of
    each flagged at every gate of ``REPORT_GATES``."""
    groups = {
        "clean/train": estimates(model, clean),
        "clean/train JPEG q50": estimates(model, jpeg(clean, 50)),
        "CLIVE (val carve)": estimates(model, clive),
        "CLIVE JPEG q50": estimates(model, jpeg(clive, 50)),
    }
    attacked_est = estimates(model, attacked)
    true_strength = strength(clean, attacked)
    for name in sorted(set(names)):
        mask = torch.tensor([n == name for n in names])
        groups[f"attacked: {name}"] = attacked_est[mask]
    report: dict[str, Any] = {}
    for group, values in groups.items():
        row = summarize(values, REPORT_GATES)
        report[group] = {
            "n": row["n"],
            "median": round(row["median"], 3),
            "p90": round(row["p90"], 3),
            "flagged": {str(g): round(share, 3) for g, share in row["flagged"].items()},
        }
    report["attacked: true strength median"] = round(float(true_strength.median()), 3)
    return report


def train(args: argparse.Namespace, command: str, stop_signal: list[int]) -> int:
    """Both phases; the exit code."""
    started = time.monotonic()
    torch.set_num_threads(args.threads)
    output = args.output if args.output.is_absolute() else Path.cwd() / args.output
    check_output_free(output, args.run_dir)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(logger, args.run_dir)
    logger.info("command: %s", command)

    train_dir = args.data / "clean" / "train"
    all_paths = [p for p in list_images(train_dir) if p.name not in TUNING_IMAGES]
    train_paths, holdout_paths = holdout_split(all_paths, args.holdout)
    sources = load_images_uint8(train_paths, "clean train", skip_unreadable=True)
    held = load_images_uint8(holdout_paths, "clean held-out", skip_unreadable=True)
    fit_rows, val_rows = carve_validation(read_mos_csv(args.data, "train"), 0.15, seed=0)
    clive = load_images_uint8([r.path for r in fit_rows[: args.clive_images]], "CLIVE train")
    clive_val = load_images_uint8([r.path for r in val_rows], "CLIVE val carve")

    metric = MetricModel(args.device, args.metric_checkpoint).eval()
    for parameter in metric.parameters():
        parameter.requires_grad_(False)
    attacks = RandomAttacks(
        metric, args.attacks, eps_range=(args.eps_range[0] / 255, args.eps_range[1] / 255)
    )
    shard_root = args.run_dir / SHARD_DIR
    make_shards(shard_root / "train", args.shards, sources, attacks, args, args.seed)
    make_shards(shard_root / "val", args.val_shards, held, attacks, args, args.seed + 1)
    if stop_signal:
        return 1
    clean, attacked, _ = read_shards(shard_root / "train")
    val_clean, val_attacked, val_names = read_shards(shard_root / "val")
    data_generator = torch.Generator().manual_seed(args.seed)
    clive_crops = random_crops(clive, 4 * len(clean), args.crop, data_generator)
    clive_val_crops = random_crops(clive_val, len(val_clean), args.crop, data_generator)
    target = strength(clean, attacked)
    logger.info(
        "%d attacked crops (median strength %.2f/255), %d CLIVE crops",
        len(attacked),
        float(target.median()),
        len(clive_crops),
    )

    device = torch.device(args.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # accelerate trains on the current CUDA device
    accelerator = Accelerator(cpu=device.type == "cpu", project_dir=str(args.run_dir))
    model = PerturbationDetector()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    progress = TrainingProgress(data_generator)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(progress)
    if args.resume:
        checkpoint = (
            latest_checkpoint(args.run_dir) if args.resume == "latest" else Path(args.resume)
        )
        accelerator.load_state(str(checkpoint))
        logger.info("resumed from %s at step %d", checkpoint, progress.step)
    budget = math.inf if args.max_minutes is None else args.max_minutes * 60
    seconds_before, session_start = progress.seconds, time.monotonic()
    half = args.batch_size // 2
    bar = tqdm(total=args.steps, initial=progress.step, desc="training detector", mininterval=10)
    running = []
    while progress.step < args.steps and not stop_signal:
        if time.monotonic() - session_start > budget:
            logger.info("time budget of %.1f min reached", args.max_minutes)
            break
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * progress.step / args.steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        gen = progress.generator
        picks = torch.randint(len(attacked), (half,), generator=gen)
        pairs = augment(torch.cat([clean[picks], attacked[picks]], 1), args.train_crop, gen)
        positives = weaken(
            pairs[:, :3], pairs[:, 3:], args.weaken_prob, args.weaken_floor, gen, args.weaken_mask
        )
        natural = natural_batch([clean, clive_crops], half, args, gen)
        negatives = augment(natural, args.train_crop, gen)
        images = torch.cat([positives, negatives]).to(accelerator.device).float() / 255
        goal = torch.cat([strength(pairs[:, :3], positives), torch.zeros(len(negatives))])
        goal = goal.to(accelerator.device)
        model.train()
        loss = log_strength_loss(model(images), goal)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        progress.step += 1
        progress.seconds = seconds_before + time.monotonic() - session_start
        bar.update(1)
        running.append(loss.item())
        if progress.step % 100 == 0:
            logger.info("step %d loss %.4f lr %.2e", progress.step, np.mean(running), lr)
            running = []
        if progress.step % args.checkpoint_every == 0:
            accelerator.save_state(str(args.run_dir / CHECKPOINT_DIR / f"step_{progress.step}"))
            for old in checkpoints_oldest_first(args.run_dir)[:-2]:
                shutil.rmtree(old)
    bar.close()
    if stop_signal:
        accelerator.save_state(str(args.run_dir / CHECKPOINT_DIR / f"step_{progress.step}"))
        logger.warning("stopped by signal; resume with --resume latest")
        return 1
    detector = accelerator.unwrap_model(model).eval()
    report = held_out_report(detector, val_clean, val_attacked, val_names, clive_val_crops)
    logger.info("held-out report:\n%s", json.dumps(report, indent=1))
    save_detector(
        detector,
        output,
        output.name,
        training={
            "data": {
                "attacked": f"random crops of {train_dir} minus the tuning images and "
                f"{len(holdout_paths)} held-out images",
                "natural": "the same crops, CLIVE train split (val carve held out), JPEG copies",
                "holdout_images": [p.name for p in holdout_paths],
                "metric_attacked": str(args.metric_checkpoint or "stand-in"),
            },
            "steps": progress.step,
            "train_seconds": round(progress.seconds, 1),
            "wall_minutes": round((time.monotonic() - started) / 60, 1),
            "command": command,
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "held_out": report,
        },
    )
    logger.info("wrote %s", output)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_script(parse_args, train, argv, "train_detector.py")

