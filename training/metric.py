"""Train the stand-in quality metric (Linearity's design, small trunk) from scratch on CLIVE.

Trains ``IQAModel(spec)`` with Linearity's norm-in-norm loss (p=1, q=2, weights 0.1/0.1/1 on
regr6/regr7/regression) on random native-resolution crops of the CLIVE *train* split, plus a
RankIQA-style ranking loss on synthetically distorted crops (a distorted copy must score below
its source, a stronger distortion below a milder one). A fixed subset of the train split is
held out for model selection; the test split is never read. When the epochs or the time
budget run out, the best validation weights are calibrated to the MOS scale (least squares
on the train split) and written as a stand-in folder with a manifest.

    python scripts/train_metric.py --output weights/standin-metric-v1 --max-minutes 80
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from scipy import stats
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from common import paths
from common.atomic_write import save_tensors
from common.cli_options import (
    non_negative_int,
    positive_float,
    positive_int,
)
from common.image_io import list_images, load_images_uint8, random_window
from common.weights_manifest import sha256_file
from metrics.clive_data import MosRow, carve_validation, clive_dir, read_mos_csv
from metrics.iqa_losses import LINEARITY_WEIGHTS, linearity_loss, ranking_hinge_loss
from metrics.linearity import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AnyTrunkSpec,
    IQAModel,
    TrunkSpec,
)
from metrics.mobilenet_v2 import MobileNetV2Spec, load_pretrained_trunk
from metrics.standin import STANDIN_SPEC, save_standin, spec_to_dict
from metrics.synthetic_distortions import (
    ANY_SOURCE_KINDS,
    CLEAN_SOURCE_KINDS,
    N_LEVELS,
    distort,
)
from training.denoiser_run import check_output_free

logger = logging.getLogger("train_metric")
CHECKPOINT_DIR = "checkpoint"
BEST_FILE = "best.safetensors"
PRETRAIN_INFO_FILE = "trunk.json"  # written beside the trunk by pretrain_metric_trunk.py


def add_trunk_arguments(parser: argparse.ArgumentParser) -> None:
    """``--blocks --groups --width-per-group --stem-width`` (default: the stand-in's shape)."""
    add = parser.add_argument
    add(
        "--trunk",
        choices=("resnext", "mobilenet_v2"),
        default="resnext",
        help="resnext: the shape below; mobilenet_v2: MobileNetV2 1.0 (start it from the "
        "ImageNet-pretrained file with --init-trunk; the shape options do not apply)",
    )
    add("--blocks", type=int, nargs=4, default=list(STANDIN_SPEC.blocks), help="per stage")
    add("--groups", type=int, default=STANDIN_SPEC.groups)
    add("--width-per-group", type=int, default=STANDIN_SPEC.width_per_group)
    add("--stem-width", type=int, default=STANDIN_SPEC.stem_width)


def trunk_spec(args: argparse.Namespace) -> AnyTrunkSpec:
    """The trunk spec the ``add_trunk_arguments`` options describe."""
    if args.trunk == "mobilenet_v2":
        return MobileNetV2Spec()
    return TrunkSpec(tuple(args.blocks), args.groups, args.width_per_group, args.stem_width)


def check_trunk_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A usage error (exit 2) unless the trunk options describe a buildable trunk."""
    try:
        trunk_spec(args)
    except ValueError as err:
        parser.error(f"--blocks/--groups/--width-per-group/--stem-width: {err}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=paths.default_data_dir(), help="holds clive/")
    p.add_argument("--output", type=Path, default=paths.WEIGHTS_DIR / "standin-metric-v1")
    p.add_argument("--run-dir", type=Path, default=None, help="logs/checkpoints (runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>/checkpoint")
    p.add_argument(
        "--epochs", type=positive_int, default=200, help="upper bound; --max-minutes decides"
    )
    p.add_argument(
        "--max-minutes", type=positive_float, default=80.0, help="wall-clock budget, all in"
    )
    p.add_argument("--reserve-minutes", type=float, default=1.5, help="kept for calibration")
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--seed", type=int, default=0)
    add_trunk_arguments(p)
    p.add_argument(
        "--init-trunk",
        type=Path,
        default=None,
        help="start the trunk from a trunk.safetensors of scripts/pretrain_metric_trunk.py, "
        "or (--trunk mobilenet_v2) from ../shared/pretrained/mobilenet_v2_imagenet/"
        "mobilenet_v2_imagenet.safetensors",
    )
    p.add_argument(
        "--crop", type=positive_int, default=224, help="square training crop, native pixels"
    )
    p.add_argument("--batch-size", type=positive_int, default=16, help="CLIVE crops per step")
    p.add_argument("--rank-sources", type=int, default=2, help="ranked source crops per step")
    p.add_argument("--rank-weight", type=float, default=0.3)
    p.add_argument("--rank-margin", type=float, default=0.3, help="in units of score std")
    p.add_argument("--clean-dir", type=Path, default=None, help="extra ranking sources")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument(
        "--trunk-lr-scale",
        type=float,
        default=1.0,
        help="the trunk's learning rate over --lr (below 1: a pre-trained trunk moves slower "
        "than the heads)",
    )
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=float, default=0.03, help="fraction of the schedule")
    p.add_argument("--ema-decay", type=float, default=0.995)
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--val-seed", type=int, default=0, help="fixes which train images are val")
    p.add_argument(
        "--train-limit", type=non_negative_int, default=0, help="pilot runs: use N fit images"
    )
    p.add_argument(
        "--checkpoint-every", type=positive_int, default=2, help="epochs between checkpoints"
    )
    args = p.parse_args(argv)
    check_trunk_arguments(p, args)
    if not 0 < args.val_fraction < 1:
        p.error(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if not 0 < args.trunk_lr_scale <= 1:
        p.error(f"--trunk-lr-scale must be in (0, 1], got {args.trunk_lr_scale}")
    if args.run_dir is None:
        args.run_dir = paths.ROOT / "runs" / args.output.name
    if args.clean_dir is None:
        args.clean_dir = args.data / "clean" / "train"
    return args


@dataclass
class TrainState:
    """Loop counters saved with every checkpoint (accelerate calls state_dict/load_state_dict)."""

    epoch: int = 0
    step: int = 0
    train_seconds: float = 0.0
    schedule_seconds: float = 0.0
    best_srcc: float = -2.0
    best_epoch: int = -1
    history: list[dict[str, float]] = field(default_factory=list)
    generator: torch.Generator = field(default_factory=torch.Generator)

    def state_dict(self) -> dict[str, Any]:
        return {
            "counters": json.dumps(
                {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "generator"}
            ),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in json.loads(state["counters"]).items():
            setattr(self, key, value)
        self.generator.set_state(state["generator"])


def setup_logging(run_dir: Path, log_name: str = "train_metric.log") -> None:
    """Log to ``run_dir/log_name`` and to stderr."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in (logging.FileHandler(run_dir / log_name), logging.StreamHandler()):
        handler.setFormatter(fmt)
        root.addHandler(handler)


def random_crop(
    image: torch.Tensor, size: int, gen: torch.Generator, dihedral: bool = True
) -> torch.Tensor:
    """Random ``size`` x ``size`` crop of a uint8 ``(3, H, W)`` image -> float [0, 1].

    With ``dihedral`` a random flip and 90-degree rotation follow (quality is orientation-free;
    some CLIVE photos are stored sideways).
    """
    top, left = random_window(image, size, gen)
    crop = image[:, top : top + size, left : left + size].float() / 255.0
    if dihedral:
        if torch.rand((), generator=gen) < 0.5:
            crop = crop.flip(-1)
        crop = torch.rot90(crop, int(torch.randint(0, 4, (), generator=gen)), dims=(-2, -1))
    return crop


class Normalise(torch.nn.Module):
    """[0, 1] RGB -> ImageNet-normalised input, as ``MetricModel`` does."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def predict(model: torch.nn.Module, images: list[torch.Tensor], desc: str) -> np.ndarray:
    """Full-image outputs ``[regression, regr6, regr7]`` for uint8 images: ``(N, 3)``."""
    norm = Normalise()
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for image in tqdm(images, desc=desc, leave=False, mininterval=10):
            r6, r7, reg = model(norm(image[None].float() / 255.0))
            out.append([reg.item(), r6.item(), r7.item()])
    model.train(was_training)
    return np.asarray(out)


def correlations(pred: np.ndarray, mos: np.ndarray) -> tuple[float, float]:
    """(SRCC, PLCC) of predictions against MOS (both are invariant to a positive affine map)."""
    return float(stats.spearmanr(pred, mos)[0]), float(stats.pearsonr(pred, mos)[0])


def schedule_lr(base_lr: float, progress: float, warmup: float) -> float:
    """Linear warm-up, then cosine decay to 1% of ``base_lr`` at ``progress`` = 1."""
    if progress < warmup:
        return base_lr * max(progress / warmup, 0.02)
    t = min(1.0, (progress - warmup) / max(1e-9, 1 - warmup))
    return base_lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


def parameter_groups(model: IQAModel, trunk_lr_scale: float) -> list[dict[str, Any]]:
    """AdamW groups: the trunk (``features.*``) at ``trunk_lr_scale`` x the learning rate, the
    heads at 1x; the scale is kept in each group's ``lr_scale``."""
    trunk = [p for n, p in model.named_parameters() if n.startswith("features.")]
    heads = [p for n, p in model.named_parameters() if not n.startswith("features.")]
    return [
        {"params": trunk, "lr_scale": trunk_lr_scale},
        {"params": heads, "lr_scale": 1.0},
    ]


def load_trunk(model: IQAModel, path: Path) -> None:
    """Copy the ``features.*`` tensors in ``path`` (safetensors) into ``model``'s trunk;
    ``ValueError`` unless they are exactly that trunk's tensors, with its shapes."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ValueError(f"--init-trunk: {path} does not exist")
    try:
        tensors = load_file(path)
    except SafetensorError as err:
        raise ValueError(f"--init-trunk: {path} is not a safetensors file ({err})") from None
    expected = {f"features.{k}": v for k, v in model.features.state_dict().items()}
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise ValueError(
            f"{path} does not hold this trunk: missing {missing[:4]}, unexpected {extra[:4]} "
            "(pre-train with the same --blocks/--groups/--width-per-group/--stem-width)"
        )
    wrong = [k for k, v in tensors.items() if v.shape != expected[k].shape]
    if wrong:
        raise ValueError(
            f"{path}: {wrong[0]} has shape {tuple(tensors[wrong[0]].shape)}, "
            f"the trunk needs {tuple(expected[wrong[0]].shape)}"
        )
    model.features.load_state_dict({k.removeprefix("features."): v for k, v in tensors.items()})


def trunk_provenance(path: Path) -> dict:
    """What the manifest records about an ``--init-trunk`` file: its name and sha256, and the
    pre-training's record (``trunk.json`` beside it, per-epoch history left out) when present."""
    record: dict = {"file": str(path), "sha256": sha256_file(path)}
    info = path.with_name(PRETRAIN_INFO_FILE)
    if info.is_file():
        pretraining = json.loads(info.read_text())
        pretraining.pop("history", None)
        record["pretraining"] = pretraining
    return record


def make_batch(
    args: argparse.Namespace,
    fit_images: list[torch.Tensor],
    fit_mos: torch.Tensor,
    idx: list[int],
    sources: list[tuple[torch.Tensor, tuple[str, ...]]],
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Stack CLIVE crops, then ranked triplets (source, mild, strong); returns x, mos, n_rank."""
    crops = [random_crop(fit_images[i], args.crop, gen) for i in idx]
    n_rank = args.rank_sources if args.rank_weight > 0 else 0
    src, mild, strong = [], [], []
    for _ in range(n_rank):
        image, kinds = sources[int(torch.randint(0, len(sources), (), generator=gen))]
        crop = random_crop(image, args.crop, gen)
        kind = kinds[int(torch.randint(0, len(kinds), (), generator=gen))]
        lo, hi = sorted(torch.randperm(N_LEVELS, generator=gen)[:2].tolist())
        src.append(crop)
        mild.append(distort(crop, kind, lo, gen))
        strong.append(distort(crop, kind, hi, gen))
    x = torch.stack(crops + src + mild + strong)
    return x, fit_mos[idx], n_rank


def step_loss(
    outputs: list[torch.Tensor], mos: torch.Tensor, n_mos: int, n_rank: int, args
) -> tuple[torch.Tensor, float, float]:
    """Norm-in-norm on the CLIVE part + weighted ranking hinge on the triplets."""
    mos_loss = linearity_loss([o[:n_mos] for o in outputs], mos)
    rank_loss = torch.zeros(())
    if n_rank:
        for o, w in zip(outputs, LINEARITY_WEIGHTS, strict=True):
            spread = o[:n_mos].detach().std()
            s, m, h = o[n_mos:].split(n_rank)
            pairs = ranking_hinge_loss(s, m, spread, args.rank_margin) + ranking_hinge_loss(
                m, h, spread, args.rank_margin
            )
            rank_loss = rank_loss + w * pairs / 2
    return mos_loss + args.rank_weight * rank_loss, mos_loss.item(), rank_loss.item()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wall_start = time.monotonic()
    torch.set_num_threads(args.threads)
    # Several launched processes (accelerate launch / torchrun) train data-parallel on CPU:
    # each takes its own batches of one shared permutation; only the main one logs info and
    # writes weights.
    check_output_free(args.output)  # before any file of the run is made
    accelerator = Accelerator(cpu=True)
    setup_logging(args.run_dir)
    if not accelerator.is_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    logger.info("command: %s", " ".join(map(shlex.quote, ["python", *sys.argv])))
    logger.info("args: %s", vars(args))

    rows = read_mos_csv(args.data, "train")
    fit_rows, val_rows = carve_validation(rows, args.val_fraction, args.val_seed)
    if args.train_limit:
        fit_rows = fit_rows[: args.train_limit]
    logger.info("CLIVE train split %d = fit %d + val %d", len(rows), len(fit_rows), len(val_rows))
    fit_images = load_images_uint8([r.path for r in fit_rows], "fit images")
    val_images = load_images_uint8([r.path for r in val_rows], "val images")
    fit_mos = torch.tensor([r.mos for r in fit_rows], dtype=torch.float32)
    val_mos = np.asarray([r.mos for r in val_rows])
    sources: list[tuple[torch.Tensor, tuple[str, ...]]] = [
        (im, ANY_SOURCE_KINDS) for im in fit_images
    ]
    n_clean = 0
    if args.rank_weight > 0 and args.clean_dir.is_dir():
        clean = load_images_uint8(list_images(args.clean_dir, recursive=False), "clean images")
        clean = [im for im in clean if min(im.shape[-2:]) >= args.crop]
        sources += [(im, CLEAN_SOURCE_KINDS) for im in clean]
        n_clean = len(clean)
    logger.info("ranking sources: %d CLIVE fit + %d clean", len(fit_images), n_clean)

    spec = trunk_spec(args)
    torch.manual_seed(args.seed)
    model = IQAModel(spec)
    if args.init_trunk is not None:
        try:
            if isinstance(spec, MobileNetV2Spec):
                load_pretrained_trunk(model.features, args.init_trunk)
            else:
                load_trunk(model, args.init_trunk)
        except ValueError as err:
            logger.error("%s", err)
            return 2
        logger.info("trunk initialised from %s", args.init_trunk)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.ema_decay), use_buffers=True)
    optimizer = torch.optim.AdamW(
        parameter_groups(model, args.trunk_lr_scale), lr=args.lr, weight_decay=args.weight_decay
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    state = TrainState()
    state.generator.manual_seed(args.seed)
    accelerator.register_for_checkpointing(ema, state)
    norm = Normalise()
    ckpt_dir = args.run_dir / CHECKPOINT_DIR
    if args.resume:
        if not ckpt_dir.is_dir():
            logger.error("--resume given but %s does not exist", ckpt_dir)
            return 2
        accelerator.load_state(str(ckpt_dir))
        logger.info(
            "resumed at epoch %d step %d (best val SRCC %.4f)",
            state.epoch,
            state.step,
            state.best_srcc,
        )
    budget = args.max_minutes * 60 - args.reserve_minutes * 60
    if state.schedule_seconds == 0.0:
        state.schedule_seconds = max(60.0, budget - (time.monotonic() - wall_start))
    logger.info("LR schedule spans %.1f min of training", state.schedule_seconds / 60)

    rank, processes = accelerator.process_index, accelerator.num_processes
    steps_per_epoch = len(fit_images) // (args.batch_size * processes)
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(fit_images)} fit images make no batch of {args.batch_size} x {processes} "
            "process(es): lower --batch-size"
        )
    out_of_time = False
    while state.epoch < args.epochs and not out_of_time:
        model.train()
        perm = torch.randperm(len(fit_images), generator=state.generator).tolist()
        perm = broadcast_object_list([perm])[0]  # the main process's, on every process
        t_epoch = time.monotonic()
        sums = np.zeros(3)
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {state.epoch}",
            mininterval=30,
            disable=not accelerator.is_main_process,
        )
        for i in bar:
            t0 = time.monotonic()
            progress = max(state.epoch / args.epochs, state.train_seconds / state.schedule_seconds)
            lr = schedule_lr(args.lr, progress, args.warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            first = (i * processes + rank) * args.batch_size
            idx = perm[first : first + args.batch_size]
            x, mos, n_rank = make_batch(args, fit_images, fit_mos, idx, sources, state.generator)
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            outputs = model(norm(x))
            loss, mos_loss, rank_loss = step_loss(outputs, mos, len(idx), n_rank, args)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            ema.update_parameters(accelerator.unwrap_model(model))
            state.step += 1
            state.train_seconds += time.monotonic() - t0
            sums += (mos_loss, rank_loss, 1)
            bar.set_postfix(nin=f"{mos_loss:.3f}", rank=f"{rank_loss:.3f}", lr=f"{lr:.2e}")
            if time.monotonic() - wall_start > budget:
                accelerator.set_trigger()
            if accelerator.check_trigger():  # all processes stop at the same step
                out_of_time = True
                logger.info("time budget reached in epoch %d at step %d", state.epoch, i + 1)
                break
        state.epoch += 1
        srcc, plcc = correlations(predict(ema.module, val_images, "val")[:, 0], val_mos)
        record = {
            "epoch": state.epoch,
            "step": state.step,
            "lr": lr,
            "val_srcc": srcc,
            "val_plcc": plcc,
            "nin_loss": sums[0] / max(1, sums[2]),
            "rank_loss": sums[1] / max(1, sums[2]),
            "epoch_minutes": (time.monotonic() - t_epoch) / 60,
        }
        state.history.append(record)
        logger.info(
            "epoch %(epoch)d step %(step)d lr %(lr).2e nin %(nin_loss).4f rank "
            "%(rank_loss).4f val SRCC %(val_srcc).4f PLCC %(val_plcc).4f "
            "(%(epoch_minutes).1f min)",
            record,
        )
        if srcc > state.best_srcc:
            state.best_srcc, state.best_epoch = srcc, state.epoch
            best = {k: v.detach().contiguous() for k, v in ema.module.state_dict().items()}
            if accelerator.is_main_process:
                save_tensors(best, args.run_dir / BEST_FILE)
            logger.info("new best val SRCC %.4f at epoch %d", srcc, state.epoch)
        if state.epoch % args.checkpoint_every == 0 or out_of_time or state.epoch == args.epochs:
            accelerator.save_state(str(ckpt_dir), safe_serialization=True)

    accelerator.wait_for_everyone()
    accelerator.end_training()  # ends the process group of a data-parallel run
    if not accelerator.is_main_process:
        return 0
    return finish(args, spec, state, rows, fit_rows, val_rows, n_clean, wall_start)


def finish(
    args: argparse.Namespace,
    spec: AnyTrunkSpec,
    state: TrainState,
    rows: list[MosRow],
    fit_rows: list[MosRow],
    val_rows: list[MosRow],
    n_clean: int,
    wall_start: float,
) -> int:
    """Calibrate the best weights on the val subset of the train split; write the folder."""
    from safetensors.torch import load_file

    best_path = args.run_dir / BEST_FILE
    if not best_path.is_file():
        logger.error("no best weights at %s: nothing to release", best_path)
        return 1
    model = IQAModel(spec)
    model.load_state_dict(load_file(best_path), strict=True)
    # Calibrate on the held-out val part of the train split: the fit part is where the model
    # has overfitted, so its scores spread wider than on unseen images.
    pred = predict(model, load_images_uint8([r.path for r in val_rows], "val images"), "calibrate")
    mos = np.asarray([r.mos for r in val_rows])
    k, b = [], []
    for j in range(3):
        slope, intercept = np.polyfit(pred[:, j], mos, 1)
        k.append(float(slope))
        b.append(float(intercept))
    val_srcc, val_plcc = correlations(pred[:, 0], mos)
    logger.info(
        "best epoch %d: val SRCC %.4f PLCC %.4f; k %s b %s",
        state.best_epoch,
        val_srcc,
        val_plcc,
        k,
        b,
    )
    wall = (time.monotonic() - wall_start) / 60
    save_standin(
        model,
        k,
        b,
        args.output,
        name="standin-metric",
        version=args.output.name,
        data={
            "dataset": "CLIVE (LIVE In the Wild Image Quality Challenge), train split only",
            "mos_csv_sha256": sha256_file(clive_dir(args.data) / "mos.csv"),
            "train_split": len(rows),
            "fit": len(fit_rows),
            "val": len(val_rows),
            "val_seed": args.val_seed,
            "ranking_clean_sources": n_clean,
            "init_trunk": None if args.init_trunk is None else trunk_provenance(args.init_trunk),
        },
        spec=spec_to_dict(spec),
        epochs=state.epoch,
        steps=state.step,
        best_epoch=state.best_epoch,
        wall_minutes_this_run=round(wall, 2),
        train_minutes=round(state.train_seconds / 60, 2),
        command=" ".join(map(shlex.quote, ["python", *sys.argv])),
        hyperparameters={
            k_: (str(v) if isinstance(v, Path) else v) for k_, v in vars(args).items()
        },
        val_srcc=val_srcc,
        val_plcc=val_plcc,
        calibration="least squares of each output to MOS on the val subset",
        history=state.history,
    )
    logger.info("wrote %s (%.1f min wall)", args.output, wall)
    return 0

