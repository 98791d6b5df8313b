"""Train (or fine-tune) the purification DDPM on a folder of clean images.

    python scripts/train_ddpm.py --output weights/ddpm-v1 --max-minutes 80 --threads 1
    python scripts/train_ddpm.py --init weights/ddpm-v1 --train-dir my_photos/reference \\
        --output weights/ddpm-mine --max-minutes 20

Random crops with flips/rotations from every image under ``--train-dir`` (recursive; default
``<data>/clean/train``) except a few held-out images (a deterministic list, logged and stored
in the manifest) used for validation PSNR (one-shot x0 prediction at sigma 10/255 and 25/255).
Checkpoints (``accelerator.save_state``) and an EMA snapshot folder usable by
``diffusion.load_denoiser`` are written under ``--run-dir`` every ``--checkpoint-every`` steps;
``--resume latest`` continues from the newest checkpoint. When ``--max-steps`` or the
``--max-minutes`` wall-clock budget is reached the EMA weights are written to ``--output``
(config.json + safetensors + scheduler_config.json + manifest.json). SIGINT/SIGTERM stop the
run after a checkpoint and snapshot, without writing ``--output``.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path
from typing import Any

import accelerate
import diffusers
import torch
from diffusers.training_utils import EMAModel

from common.cli_options import positive_float, positive_int
from common.image_io import centre_crop, list_images, load_image, load_images_uint8
from common.paths import default_data_dir
from common.weights_manifest import verify_manifest
from diffusion import (
    PixelUnshuffleUNet,
    TimestepSampler,
    denoise_one_shot,
    epsilon_mse_loss,
    training_scheduler,
)
from diffusion.gaussian_benchmark import add_gaussian_noise, mean_psnr
from training.denoiser_run import DenoiserRun, run_script

logger = logging.getLogger("train_ddpm")

VALIDATION_SIGMAS = (10 / 255, 25 / 255)


class RandomCrops:
    """Batches of random square crops with a random flip/rotation, in [-1, 1]."""

    def __init__(self, images: list[torch.Tensor], crop: int, generator: torch.Generator) -> None:
        self.images = [img for img in images if min(img.shape[-2:]) >= crop]
        if not self.images:
            raise ValueError(f"no training image is at least {crop}x{crop} pixels")
        if len(self.images) < len(images):
            logger.warning(
                "%d images smaller than %d px skipped", len(images) - len(self.images), crop
            )
        self.crop = crop
        self.generator = generator

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))

    def batch(self, batch_size: int) -> torch.Tensor:
        """``(batch_size, 3, crop, crop)`` float32 in [-1, 1]."""
        crops = []
        for _ in range(batch_size):
            image = self.images[self._randint(len(self.images))]
            height, width = image.shape[-2:]
            top, left = self._randint(height - self.crop + 1), self._randint(width - self.crop + 1)
            patch = image[:, top : top + self.crop, left : left + self.crop]
            patch = torch.rot90(patch, self._randint(4), dims=(1, 2))
            if self._randint(2):
                patch = patch.flip(-1)
            crops.append(patch)
        return torch.stack(crops).float() / 127.5 - 1.0


# the network's shape when training from scratch (an --init folder brings its own)
NETWORK_SHAPE = {
    "unshuffle": 4,
    "channels": [64, 128, 192],
    "layers_per_block": 1,
    "norm_groups": 8,
}
SHAPE_CONFIG_KEYS = {  # where each is stored in the network's config
    "unshuffle": "unshuffle",
    "channels": "block_out_channels",
    "layers_per_block": "layers_per_block",
    "norm_groups": "norm_num_groups",
}


def check_shape_matches(given: dict[str, Any], config: Any, init: Path) -> None:
    """``ValueError`` if a shape flag given with ``--init`` differs from its config."""

    def as_list(value: Any) -> list:
        return list(value) if isinstance(value, (list, tuple)) else [value]

    differ = [
        f"--{name.replace('_', '-')} {value} (the folder has {config[SHAPE_CONFIG_KEYS[name]]})"
        for name, value in given.items()
        if as_list(value) != as_list(config[SHAPE_CONFIG_KEYS[name]])
    ]
    if differ:
        raise ValueError(f"--init {init} fixes the network's shape: {', '.join(differ)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, required=True, help="final weights folder")
    parser.add_argument("--data", type=Path, default=None, help="data root (default: $PURIFY_DATA)")
    parser.add_argument("--train-dir", type=Path, default=None, help="clean images (recursive)")
    parser.add_argument("--run-dir", type=Path, default=None, help="default runs/<output name>")
    parser.add_argument("--init", type=Path, default=None, help="weights folder to fine-tune")
    parser.add_argument("--resume", default=None, help="checkpoint folder or 'latest'")
    parser.add_argument("--max-steps", type=positive_int, default=None)
    parser.add_argument(
        "--max-minutes", type=positive_float, default=None, help="wall-clock budget"
    )
    parser.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--crop", type=int, default=64, help="training crop size (px)")
    parser.add_argument("--lr", type=float, default=4e-4, help="peak Adam learning rate")
    parser.add_argument("--min-lr-ratio", type=float, default=0.05, help="cosine floor / peak")
    parser.add_argument("--warmup-steps", type=int, default=200)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--holdout", type=int, default=8, help="held-out validation images")
    parser.add_argument("--val-crop", type=int, default=256)
    parser.add_argument("--val-every", type=int, default=1000)
    parser.add_argument("--checkpoint-every", type=int, default=1000)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--focus-max",
        type=int,
        default=400,
        help="timesteps below this get --focus-prob of the draws (the purifier's band)",
    )
    parser.add_argument("--focus-prob", type=float, default=0.8, help="share of focused draws")
    parser.add_argument(
        "--focus-power", type=float, default=1.5, help="> 1 puts more focused draws on small t"
    )
    for name, default in NETWORK_SHAPE.items():
        flag = "--" + name.replace("_", "-")
        nargs = "+" if isinstance(default, list) else None
        shown = " ".join(map(str, default)) if nargs else default
        help_text = f"network shape (default {shown}; an --init folder brings its own)"
        parser.add_argument(flag, type=int, nargs=nargs, default=None, help=help_text)
    parser.add_argument("--version", default="1", help="version recorded in the manifest")
    args = parser.parse_args(argv)
    if args.max_steps is None and args.max_minutes is None:
        parser.error("give --max-steps and/or --max-minutes")
    # shape flags given with --init must match its config (checked when it is loaded)
    args.shape_given = {n: getattr(args, n) for n in NETWORK_SHAPE if getattr(args, n) is not None}
    for name, default in NETWORK_SHAPE.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    for name in ("batch_size", "crop", "val_every", "checkpoint_every", "log_every", "holdout"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    try:
        timestep_sampler(args)
    except ValueError as err:
        parser.error(f"--focus-*: {err}")
    return args


def timestep_sampler(args: argparse.Namespace) -> TimestepSampler:
    """The training timestep distribution the ``--focus-*`` options describe."""
    steps = training_scheduler().config.num_train_timesteps
    return TimestepSampler(steps, args.focus_max, args.focus_prob, args.focus_power)


def holdout_split(paths: list[Path], count: int) -> tuple[list[Path], list[Path]]:
    """Evenly spaced images of the sorted list are held out: ``(train, holdout)``."""
    if len(paths) <= count:
        raise SystemExit(f"need more than {count} training images, found {len(paths)}")
    picked = {round((i + 0.5) * len(paths) / count) for i in range(count)}
    holdout = [p for i, p in enumerate(paths) if i in picked]
    return [p for i, p in enumerate(paths) if i not in picked], holdout


def centre_crops(paths: list[Path], size: int) -> torch.Tensor:
    """``(N, 3, s, s)`` centre crops in [0, 1], ``s`` = min(size, smallest side)."""
    images = [load_image(p) for p in paths]
    size = min([size] + [min(img.shape[-2:]) for img in images])
    return torch.stack([centre_crop(img, size) for img in images])


def validate(model: PixelUnshuffleUNet, images: torch.Tensor, seed: int) -> dict[str, float]:
    """One-shot x0 PSNR (dB) on the held-out crops at each validation sigma."""
    scheduler_config = training_scheduler().config
    results = {}
    with torch.no_grad():
        for i, sigma in enumerate(VALIDATION_SIGMAS):
            noisy = add_gaussian_noise(images, sigma, torch.Generator().manual_seed(seed + i))
            denoised = denoise_one_shot(noisy, model, scheduler_config, sigma)
            results[f"psnr_sigma{round(sigma * 255)}"] = round(mean_psnr(denoised, images), 3)
    return results


def learning_rate(args: argparse.Namespace, step: int, fraction_done: float) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr`` over the step/time budget."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    floor = args.min_lr_ratio
    return args.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(fraction_done, 1.0))))


def main(argv: list[str] | None = None) -> int:
    return run_script(parse_args, train, argv, "train_ddpm.py")


def train(args: argparse.Namespace, command: str, stop_signal: list[int]) -> int:
    """The training run; returns the exit code (0 when ``--output`` was written)."""
    run = DenoiserRun(args, command, stop_signal, logger)
    data_dir = args.data or default_data_dir()
    train_dir = args.train_dir or data_dir / "clean" / "train"
    train_paths, holdout_paths = holdout_split(list_images(train_dir, recursive=True), args.holdout)
    logger.info(
        "training folder %s: %d images, %d held out: %s",
        train_dir,
        len(train_paths),
        len(holdout_paths),
        ", ".join(p.name for p in holdout_paths),
    )
    # each process of a data-parallel run draws its own crops
    generator = torch.Generator().manual_seed(args.seed + run.accelerator.process_index)
    crops = RandomCrops(
        load_images_uint8(train_paths, "loading images", skip_unreadable=True), args.crop, generator
    )
    val_images = centre_crops(holdout_paths, args.val_crop)
    init_validation: dict[str, float] = {}

    if args.init:
        verify_manifest(args.init)
        model = PixelUnshuffleUNet.from_pretrained(args.init, local_files_only=True)
        check_shape_matches(args.shape_given, model.config, args.init)
        logger.info("fine-tuning from %s", args.init)
        # what the fine-tune buys: the starting weights on the same held-out crops
        init_validation = validate(model.eval(), val_images, args.seed)
        logger.info("validation of the initial weights (one-shot) %s", init_validation)
    else:
        model = PixelUnshuffleUNet(
            unshuffle=args.unshuffle,
            block_out_channels=tuple(args.channels),
            layers_per_block=args.layers_per_block,
            norm_num_groups=args.norm_groups,
        )
    logger.info(
        "model %s, %.2fM parameters",
        {k: v for k, v in model.config.items() if not k.startswith("_")},
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    ema = EMAModel(model.parameters(), decay=args.ema_decay, use_ema_warmup=True, power=2 / 3)
    model, optimizer = run.prepare(model, optimizer, ema, generator)

    scheduler = training_scheduler()
    sampler = timestep_sampler(args)
    logger.info(
        "%s, batch %d x %dpx, %s", sampler, args.batch_size, args.crop, args.mixed_precision
    )
    last_validation: dict[str, float] = {}

    def training_info() -> dict[str, Any]:
        return {
            "training": {
                "data_folder": str(train_dir.resolve()),
                "num_images": len(crops.images),
                "holdout_images": [p.name for p in holdout_paths],
                "steps": run.step,
                "wall_time_seconds": round(run.progress.seconds, 1),
                "command": command,
                "sessions": run.progress.sessions,
                "init": str(args.init) if args.init else None,
                "batch_size": args.batch_size,
                "crop": args.crop,
                "lr": args.lr,
                "ema_decay": args.ema_decay,
                "mixed_precision": args.mixed_precision,
                "timestep_sampler": repr(sampler),
                "software": {
                    "diffusers": diffusers.__version__,
                    "accelerate": accelerate.__version__,
                },
                "validation": last_validation,
                "init_validation": init_validation,
            },
            "model": {"class": "PixelUnshuffleUNet", **run.model_config},
        }

    bar = run.progress_bar("training")
    loss_sum, loss_count, window_start = 0.0, 0, time.monotonic()
    while not run.should_stop():
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(args, run.step, run.fraction_done())
        clean = crops.batch(args.batch_size).to(run.device)
        timesteps = sampler.sample(args.batch_size, generator)
        loss = epsilon_mse_loss(model, scheduler, clean, timesteps, generator)
        run.optimizer_step(loss, model, optimizer)
        loss_sum, loss_count = loss_sum + loss.item(), loss_count + 1
        if run.step % args.log_every == 0:
            rate = loss_count / (time.monotonic() - window_start)
            logger.info(
                "step %d loss %.5f lr %.2e %.2f steps/s elapsed %.1f min",
                run.step,
                loss_sum / loss_count,
                optimizer.param_groups[0]["lr"],
                rate,
                run.elapsed_minutes(),
            )
            bar.set_postfix(loss=f"{loss_sum / loss_count:.4f}")
            loss_sum, loss_count, window_start = 0.0, 0, time.monotonic()
        if run.step % args.val_every == 0:
            last_validation = validate(run.ema_model(), val_images, args.seed)
            logger.info("step %d validation (EMA, one-shot) %s", run.step, last_validation)
        if run.step % args.checkpoint_every == 0:
            run.checkpoint(training_info(), args.version)

    last_validation = validate(run.ema_model(), val_images, args.seed)
    logger.info("final validation (EMA, one-shot) at step %d: %s", run.step, last_validation)
    return run.finish(training_info, args.version, last_validation)
