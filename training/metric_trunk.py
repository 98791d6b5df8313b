"""Pre-train the stand-in metric's trunk without labels: which distortion, how strong?

Every training crop (CLIVE ``train`` photos minus the validation carve, plus ``clean/train``;
no MOS is read) is left as it is or distorted by one of the graded synthetic distortions of
``synthetic_distortions`` (kind x level). A linear classifier on the trunk's two pooled
feature levels (the ones Linearity's heads read) learns to name the class, cross-entropy. The
trunk then starts ``scripts/train_metric.py --init-trunk`` instead of a random one: features
that tell blur, noise, compression and contrast loss apart and grade them, learnt from
1.3 k unlabelled photos before the 790 labelled ones are seen (the distortion-aware
pre-training idea of CONTRIQUE, Madhusudana et al. 2022, as a classification task).

    python scripts/pretrain_metric_trunk.py --blocks 2 1 1 1 --groups 4 --width-per-group 16 \\
        --stem-width 32 --max-minutes 45 --run-dir runs/pretrain-aux

Writes ``<run-dir>/trunk.safetensors`` (the ``features.*`` tensors of ``IQAModel``) and
``<run-dir>/trunk.json`` (spec, data, command, held-out accuracy per epoch).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn
from tqdm import tqdm

from common import paths
from common.atomic_write import save_tensors
from common.cli_options import (
    non_negative_int,
    positive_float,
    positive_int,
)
from common.image_io import list_images, load_images_uint8
from metrics.clive_data import carve_validation, read_mos_csv
from metrics.linearity import IQAModel, TrunkSpec
from metrics.standin import spec_to_dict
from metrics.synthetic_distortions import (
    ANY_SOURCE_KINDS,
    CLEAN_SOURCE_KINDS,
    N_LEVELS,
    distort,
)
from training.metric import (
    PRETRAIN_INFO_FILE,
    Normalise,
    TrainState,
    add_trunk_arguments,
    check_trunk_arguments,
    random_crop,
    schedule_lr,
    setup_logging,
    trunk_spec,
)

logger = logging.getLogger("pretrain_metric_trunk")
TRUNK_FILE = "trunk.safetensors"
INFO_FILE = PRETRAIN_INFO_FILE
CHECKPOINT_DIR = "checkpoint"
N_CLASSES = 1 + len(CLEAN_SOURCE_KINDS) * N_LEVELS
"""Class 0: untouched; class ``1 + kind_index * N_LEVELS + level`` otherwise."""


def distortion_class(kind: str, level: int) -> int:
    """The class index of ``kind`` at ``level`` (see ``N_CLASSES``)."""
    if kind not in CLEAN_SOURCE_KINDS:
        raise ValueError(f"unknown distortion {kind!r}; choose from {CLEAN_SOURCE_KINDS}")
    if not 0 <= level < N_LEVELS:
        raise ValueError(f"level must be in [0, {N_LEVELS - 1}], got {level}")
    return 1 + CLEAN_SOURCE_KINDS.index(kind) * N_LEVELS + level


class DistortionClassifier(nn.Module):
    """``IQAModel``'s trunk with a linear classifier on its two pooled feature levels.

    Input: ImageNet-normalised ``(B, 3, H, W)``; output: logits ``(B, N_CLASSES)``.
    """

    def __init__(self, spec: TrunkSpec) -> None:
        super().__init__()
        self.iqa = IQAModel(spec)  # only its trunk is trained and kept
        c6, c7 = spec.stage_channels()[2:]
        self.classifier = nn.Linear(c6 + c7, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.cat(self.iqa.pooled_features(x), dim=1))


def labelled_crop(
    image: torch.Tensor, kinds: tuple[str, ...], crop: int, untouched: float, gen: torch.Generator
) -> tuple[torch.Tensor, int]:
    """A random crop of a uint8 ``(3, H, W)`` image, distorted by a random kind and level from
    ``kinds`` (or untouched with probability ``untouched``): float ``(3, crop, crop)`` in
    [0, 1] and its class."""
    x = random_crop(image, crop, gen)
    if float(torch.rand((), generator=gen)) < untouched:
        return x, 0
    kind = kinds[int(torch.randint(len(kinds), (), generator=gen))]
    level = int(torch.randint(N_LEVELS, (), generator=gen))
    return distort(x, kind, level, gen), distortion_class(kind, level)


def training_batch(
    sources: list[tuple[torch.Tensor, tuple[str, ...]]],
    count: int,
    crop: int,
    untouched: float,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` labelled crops of (uint8 image, kinds) ``sources`` drawn with replacement:
    float ``(count, 3, crop, crop)`` in [0, 1] and their classes ``(count,)``."""
    pairs = []
    for _ in range(count):
        image, kinds = sources[int(torch.randint(len(sources), (), generator=gen))]
        pairs.append(labelled_crop(image, kinds, crop, untouched, gen))
    return torch.stack([x for x, _ in pairs]), torch.tensor([y for _, y in pairs])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=paths.default_data_dir(), help="holds clive/")
    p.add_argument("--clean-dir", type=Path, default=None, help="default <data>/clean/train")
    p.add_argument("--run-dir", type=Path, required=True, help="trunk, log and checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>/checkpoint")
    p.add_argument(
        "--max-minutes", type=positive_float, default=45.0, help="wall-clock budget, all in"
    )
    p.add_argument(
        "--max-steps", type=non_negative_int, default=0, help="stop after N steps (0: no limit)"
    )
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--seed", type=int, default=0)
    add_trunk_arguments(p)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=24)
    p.add_argument("--untouched", type=float, default=0.15, help="share of undistorted crops")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=float, default=0.03)
    p.add_argument("--ema-decay", type=float, default=0.995)
    p.add_argument("--bn-batches", type=int, default=16, help="batches that refresh the EMA BN")
    p.add_argument("--val-fraction", type=float, default=0.15, help="as train_metric.py")
    p.add_argument("--val-seed", type=int, default=0, help="as train_metric.py")
    p.add_argument("--eval-crops", type=int, default=96, help="held-out crops for accuracy")
    p.add_argument("--epoch-steps", type=int, default=50, help="steps between evaluations")
    p.add_argument("--source-limit", type=int, default=0, help="pilot runs: N images per source")
    args = p.parse_args(argv)
    check_trunk_arguments(p, args)
    if args.clean_dir is None:
        args.clean_dir = args.data / "clean" / "train"
    if not 0.0 <= args.untouched < 1.0:
        p.error("--untouched must be in [0, 1)")
    for name in ("crop", "batch_size", "eval_crops", "epoch_steps", "bn_batches"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def accuracy(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of ``x`` (normalised ``(N, 3, H, W)``) classified as ``labels``, eval mode."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        hits = sum(
            (model(chunk).argmax(1) == lab).sum().item()
            for chunk, lab in zip(x.split(16), labels.split(16), strict=True)
        )
    model.train(was_training)
    return hits / len(labels)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wall_start = time.monotonic()
    torch.set_num_threads(args.threads)
    if (args.run_dir / TRUNK_FILE).exists() and not args.resume:
        raise SystemExit(
            f"{args.run_dir / TRUNK_FILE} exists: a finished run; pick a new --run-dir "
            "(or --resume to continue it)"
        )
    accelerator = Accelerator(cpu=True)
    setup_logging(args.run_dir, "pretrain_metric_trunk.log")
    command = " ".join(map(shlex.quote, ["python", *sys.argv]))
    logger.info("command: %s", command)

    fit_rows, val_rows = carve_validation(
        read_mos_csv(args.data, "train"), args.val_fraction, args.val_seed
    )
    clean_paths = list_images(args.clean_dir, recursive=False)
    if args.source_limit:
        fit_rows, clean_paths = fit_rows[: args.source_limit], clean_paths[: args.source_limit]
        val_rows = val_rows[: args.source_limit]
    clive = load_images_uint8([r.path for r in fit_rows], "CLIVE fit images (no MOS)")
    clean = [
        im
        for im in load_images_uint8(clean_paths, "clean images")
        if min(im.shape[-2:]) >= args.crop
    ]
    sources = [(im, ANY_SOURCE_KINDS) for im in clive] + [(im, CLEAN_SOURCE_KINDS) for im in clean]
    logger.info("sources: %d CLIVE fit + %d clean (no labels read)", len(clive), len(clean))
    held = load_images_uint8([r.path for r in val_rows], "CLIVE val carve (eval crops)")
    eval_gen = torch.Generator().manual_seed(12345)
    norm = Normalise()
    pairs = [
        labelled_crop(held[i % len(held)], ANY_SOURCE_KINDS, args.crop, args.untouched, eval_gen)
        for i in range(args.eval_crops)
    ]
    eval_x = norm(torch.stack([x for x, _ in pairs]))
    eval_y = torch.tensor([y for _, y in pairs])

    spec = trunk_spec(args)
    torch.manual_seed(args.seed)
    model = DistortionClassifier(spec).to(memory_format=torch.channels_last)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.ema_decay), use_buffers=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    state = TrainState()
    state.generator.manual_seed(args.seed)
    accelerator.register_for_checkpointing(ema, state)
    ckpt_dir = args.run_dir / CHECKPOINT_DIR
    if args.resume:
        if not ckpt_dir.is_dir():
            logger.error("--resume given but %s does not exist", ckpt_dir)
            return 2
        accelerator.load_state(str(ckpt_dir))
        logger.info("resumed at step %d", state.step)
    budget = args.max_minutes * 60 - 30
    if state.schedule_seconds == 0.0:
        state.schedule_seconds = max(60.0, budget - (time.monotonic() - wall_start))
    loss_fn = nn.CrossEntropyLoss()
    done = False
    while not done:
        t_epoch, loss_sum, hits, steps = time.monotonic(), 0.0, 0, 0
        bar = tqdm(range(args.epoch_steps), desc=f"pretrain epoch {state.epoch}", mininterval=30)
        for _ in bar:
            t0 = time.monotonic()
            lr = schedule_lr(args.lr, state.train_seconds / state.schedule_seconds, args.warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = []
            for _ in range(args.batch_size):
                image, kinds = sources[
                    int(torch.randint(len(sources), (), generator=state.generator))
                ]
                batch.append(
                    labelled_crop(image, kinds, args.crop, args.untouched, state.generator)
                )
            x = norm(torch.stack([b[0] for b in batch])).contiguous(
                memory_format=torch.channels_last
            )
            y = torch.tensor([b[1] for b in batch])
            logits = model(x)
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            ema.update_parameters(accelerator.unwrap_model(model))
            state.step += 1
            state.train_seconds += time.monotonic() - t0
            loss_sum += loss.item()
            hits += int((logits.argmax(1) == y).sum())
            steps += 1
            bar.set_postfix(ce=f"{loss.item():.3f}", lr=f"{lr:.2e}", refresh=False)
            over_time = time.monotonic() - wall_start > budget
            if over_time or (args.max_steps and state.step >= args.max_steps):
                done = True
                break
        state.epoch += 1
        record = {
            "epoch": state.epoch,
            "step": state.step,
            "lr": lr,
            "ce": loss_sum / max(1, steps),
            "train_accuracy": hits / max(1, steps * args.batch_size),
            # the live weights: the EMA's averaged BatchNorm statistics do not match its
            # averaged weights while the learning rate is high (they are refreshed at the end)
            "held_out_accuracy": accuracy(accelerator.unwrap_model(model), eval_x, eval_y),
            "epoch_minutes": (time.monotonic() - t_epoch) / 60,
        }
        state.history.append(record)
        logger.info(
            "epoch %(epoch)d step %(step)d lr %(lr).2e ce %(ce).4f train acc "
            "%(train_accuracy).3f held-out acc %(held_out_accuracy).3f (%(epoch_minutes).1f min)",
            record,
        )
        accelerator.save_state(str(ckpt_dir), safe_serialization=True)

    refresh = [
        norm(
            training_batch(sources, args.batch_size, args.crop, args.untouched, state.generator)[0]
        )
        for _ in range(args.bn_batches)
    ]
    update_bn(refresh, ema.module)
    ema_accuracy = accuracy(ema.module, eval_x, eval_y)
    logger.info("EMA weights, BatchNorm statistics refreshed: held-out acc %.3f", ema_accuracy)
    trunk = {
        f"features.{k}": v.detach().contiguous()
        for k, v in ema.module.iqa.features.state_dict().items()
    }
    save_tensors(trunk, args.run_dir / TRUNK_FILE)
    info = {
        "kind": "label-free distortion classification, scripts/pretrain_metric_trunk.py",
        "spec": spec_to_dict(spec),
        "classes": N_CLASSES,
        "data": {
            "clive_fit_images": len(clive),
            "clean_images": len(clean),
            "clean_dir": str(args.clean_dir),
            "val_seed": args.val_seed,
            "mos_read": False,
        },
        "steps": state.step,
        "ema_held_out_accuracy": ema_accuracy,
        "train_minutes": round(state.train_seconds / 60, 2),
        "command": command,
        "history": state.history,
    }
    (args.run_dir / INFO_FILE).write_text(json.dumps(info, indent=2))
    logger.info("wrote %s (%d steps)", args.run_dir / TRUNK_FILE, state.step)
    return 0

