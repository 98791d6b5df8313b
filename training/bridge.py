"""Fine-tune the purification DDPM as a bridge from attacked to clean images.

    python scripts/finetune_bridge.py --output weights/ddpm-v2 --max-minutes 70 --threads 1
    python scripts/finetune_bridge.py --init weights/ddpm-v2 --pairs my_dataset \\
        --metric-checkpoint p1q2.pth --output weights/ddpm-mine --max-minutes 30

Starts from a released DDPM (``--init``, default the newest ``weights/ddpm-v<N>``) and trains
three terms (see ``diffusion/bridge_loss.py``):

- **bridge**: (clean, attacked) crops; the attacked crop is noised to ``t < --t-max`` and the
  network learns the noise that leads to the *clean* crop (min-SNR weighted; ``--detail-weight``
  weights its error finer than ``--detail-block`` px once more). A share
  ``--clean-fraction`` of the pairs is left unattacked so clean inputs stay untouched.
- **prior**: the ordinary DDPM loss on clean crops at every noise level, so the model stays a
  denoiser of the clean-image distribution (weight ``--prior-weight``).
- **metric consistency**: the actual sampler (``--chain-t-star`` range, ``--chain-steps``
  DDPM steps) run *with gradients* on attacked crops; the metric's score of its output is
  held at the clean crop's score (relative difference, weight ``--metric-weight``).

Pairs are made on the fly by the attack suite (``attacks.training_pairs.RandomAttacks``: every
attack family, random budget 2..16/255, iterations, EOT) against the stand-in metric or
``--metric-checkpoint``, from random crops of ``--train-dir`` (default ``clean/train`` minus
the tuner's images and the held-out validation images). Several ``--metric-checkpoint``
metrics spread the pairs over their attacks and average the consistency term, so the bridge
learns what the metrics' perturbations share rather than one network's. With ``--pairs DIR``
(the competition layout: ``DIR/reference/<img>`` and ``DIR/attacked/<attack>/<img>``) the
given pairs are used instead, with every 10th reference image held out, and the prior trains
on the training split's references (unless ``--train-dir``), so no project data is needed.
Validation: the Gain of a fixed probe purifier (t*=60, 2 DDPM steps, fixed seed) on fixed
attacked crops of held-out images, logged against the undefended Gain and written to the
manifest; ``RUN_DIR/report.md`` sets the starting and fine-tuned weights' figures side by
side. Checkpoints
every ``--checkpoint-every`` steps; ``--resume latest`` continues; the EMA weights go to
``--output`` with a manifest (a new version: released folders are never overwritten).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import accelerate
import diffusers
import torch
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from attacks.registry import ATTACKS, make_attack
from attacks.training_pairs import PairPool, RandomAttacks
from common.atomic_write import write_text_atomic
from common.cli_options import positive_float, positive_int
from common.image_io import (
    as_uint8,
    list_folders,
    list_images,
    load_image,
    load_images_uint8,
    random_window,
)
from common.paths import WEIGHTS_DIR, default_data_dir
from common.weights_manifest import verify_manifest
from diffusion import (
    PixelUnshuffleUNet,
    TimestepSampler,
    epsilon_mse_loss,
    training_scheduler,
)
from diffusion import purify as run_purification
from diffusion.bridge_loss import bridge_loss
from evaluation.benchmarking import json_ready
from evaluation.leak_probe import leaks
from evaluation.tuning import TUNING_IMAGES
from metrics.iqa_losses import score_consistency_loss
from model import MetricModel
from purifier import newest_release
from schedulers import make_scheduler
from training.ddpm import RandomCrops, centre_crops, holdout_split, learning_rate
from training.denoiser_run import DenoiserRun, run_script

logger = logging.getLogger("train_ddpm")  # shares train_ddpm's log setup

VALIDATION_ATTACKS = ("ifgsm", "korhonen", "ssah", "adv-cf")
# seed offset of each validation attack: the offsets the default list always had, so old logs
# stay comparable, and a fixed offset for every other attack
VALIDATION_SEED_OFFSETS = {
    **{name: i for i, name in enumerate(VALIDATION_ATTACKS)},
    **{name: 100 + i for i, name in enumerate(ATTACKS) if name not in VALIDATION_ATTACKS},
}
DEFAULT_METRIC = "default (p1q2.pth beside model.py, else weights/standin-metric-v2)"
T = TypeVar("T")
VALIDATION_T_STAR = 60
VALIDATION_STEPS = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--output", type=Path, required=True, help="new weights folder")
    add("--init", type=Path, default=None, help="weights to start from (default: newest release)")
    add("--data", type=Path, default=None, help="data root (default: $PURIFY_DATA)")
    add("--train-dir", type=Path, default=None, help="clean images (default <data>/clean/train)")
    add("--pairs", type=Path, default=None, help="competition-layout dataset of fixed pairs")
    add(
        "--metric-checkpoint",
        type=Path,
        nargs="+",
        default=None,
        help="metrics to attack and to hold the score of: p1q2.pth files or stand-in folders "
        "(default: the stand-in); with several, each new batch of pairs is attacked against "
        "one drawn at random, the consistency term averages them, validation uses the first",
    )
    add("--run-dir", type=Path, default=None, help="default runs/<output name>")
    add("--resume", default=None, help="checkpoint folder or 'latest'")
    add("--max-steps", type=positive_int, default=None)
    add("--max-minutes", type=positive_float, default=None, help="wall-clock budget")
    add("--threads", type=positive_int, default=None)
    add("--batch-size", type=int, default=8, help="bridge pairs per step")
    add("--crop", type=int, default=128, help="pair crop size (px)")
    add("--prior-batch", type=int, default=8, help="clean crops per step for the prior")
    add("--prior-crop", type=int, default=64, help="prior crop size (px)")
    add("--prior-weight", type=float, default=1.0)
    add("--metric-weight", type=float, default=0.1, help="0 disables the chain term")
    add("--chain-batch", type=int, default=4, help="pairs run through the sampler per step")
    add("--chain-t-star", type=int, nargs=2, default=[30, 100], help="range of t* (inclusive)")
    add("--chain-steps", type=int, default=2)
    add("--t-max", type=int, default=200, help="bridge timesteps are uniform in 0..t-max-1")
    add("--snr-gamma", type=float, default=5.0)
    add(
        "--detail-weight",
        type=float,
        default=0.0,
        help="extra weight on the bridge's error finer than --detail-block px (0: off)",
    )
    add("--detail-block", type=int, default=4, help="block size of the detail term (px, >= 2)")
    add("--clean-fraction", type=float, default=0.2)
    add("--attacks", default=",".join(ATTACKS), help="comma-separated training attacks")
    add(
        "--val-attacks",
        default=None,
        help="comma-separated attacks of the validation crops (Gain is also logged per attack; "
        f"default {','.join(VALIDATION_ATTACKS)}; not with --pairs, which validates on its own)",
    )
    add("--eps-range", type=float, nargs=2, default=[2.0, 16.0], help="L-inf budgets, /255")
    add("--max-attack-steps", type=int, default=10)
    add("--eot-prob", type=float, default=0.2)
    add("--pool-size", type=int, default=96)
    add("--refresh", type=int, default=4, help="new attacked crops per step")
    add("--lr", type=float, default=1e-4)
    add("--min-lr-ratio", type=float, default=0.1)
    add("--warmup-steps", type=int, default=100)
    add("--ema-decay", type=float, default=0.998)
    add(
        "--holdout",
        type=int,
        default=None,
        help="held-out validation images (default 8; not with --pairs, which holds out every "
        "10th reference)",
    )
    add("--val-crop", type=int, default=192)
    add("--val-every", type=int, default=250)
    add("--checkpoint-every", type=int, default=250)
    add("--log-every", type=int, default=50)
    add("--mixed-precision", choices=("no", "bf16", "fp16"), default="bf16")
    add("--seed", type=int, default=0)
    add("--version", default=None, help="version in the manifest (default: output name)")
    args = parser.parse_args(argv)
    if args.max_steps is None and args.max_minutes is None:
        parser.error("give --max-steps and/or --max-minutes")
    if args.pairs is not None:
        flags = (("--holdout", args.holdout), ("--val-attacks", args.val_attacks))
        given = [flag for flag, value in flags if value is not None]
        if given:
            parser.error(
                f"{' and '.join(given)}: not with --pairs (every 10th reference of the dataset "
                "is held out and validated on its own attacks)"
            )
    args.holdout = 8 if args.holdout is None else args.holdout
    args.val_attacks = args.val_attacks or ",".join(VALIDATION_ATTACKS)
    if args.holdout < 0:
        parser.error(f"--holdout must be >= 0, got {args.holdout}")
    low, high = args.eps_range
    if not 0 < low <= high <= 255:
        parser.error(f"--eps-range needs 0 < low <= high <= 255 (in 1/255), got {low:g} {high:g}")
    for name in (
        "batch_size",
        "crop",
        "prior_batch",
        "prior_crop",
        "chain_batch",
        "chain_steps",
        "t_max",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("pool_size", "refresh", "val_every", "checkpoint_every", "log_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0.0 <= args.clean_fraction <= 1.0:
        parser.error("--clean-fraction must be in [0, 1]")
    low, high = args.chain_t_star
    if not 1 <= low <= high < 1000:
        parser.error("--chain-t-star needs 1 <= low <= high < 1000")
    if args.detail_block < 2:
        parser.error("--detail-block must be >= 2")
    if args.metric_weight < 0 or args.prior_weight < 0 or args.detail_weight < 0:
        parser.error("loss weights must be >= 0")
    for name in ("attacks", "val_attacks"):
        chosen = [a.strip() for a in getattr(args, name).split(",") if a.strip()]
        unknown = [a for a in chosen if a not in ATTACKS]
        if unknown or not chosen:
            flag = f"--{name.replace('_', '-')}"
            parser.error(f"{flag}: unknown attacks {unknown}; known: {', '.join(ATTACKS)}")
        setattr(args, name, chosen)
    return args


def check_paths_exist(args: argparse.Namespace) -> None:
    """``ValueError`` for an input path that does not exist, before any slow loading (not in
    ``parse_args``, which also re-reads finished runs' options whose paths may be gone)."""
    if args.pairs is not None and not (args.pairs / "reference").is_dir():
        raise ValueError(f"--pairs {args.pairs}: no reference/ folder (competition layout)")
    if args.train_dir is not None and not args.train_dir.is_dir():
        raise ValueError(f"--train-dir {args.train_dir} is not a folder")
    for path in args.metric_checkpoint or []:
        if not path.exists():
            raise ValueError(f"--metric-checkpoint {path} does not exist")
    if args.init is not None and not (args.init / "manifest.json").is_file():
        raise ValueError(f"--init {args.init}: no manifest.json (a released weights folder)")
    if args.resume not in (None, "latest") and not Path(args.resume).is_dir():
        raise ValueError(f"--resume {args.resume}: no such checkpoint folder (or use 'latest')")


class FixedPairs:
    """Aligned random crops of a competition-layout dataset: ``reference/<img>`` paired with
    every ``attacked/<attack>/<img>``. Images are kept as uint8 and each reference is decoded
    once (``references``: name -> ``(3, H, W)`` uint8), shared by its attacked copies; crops
    come out float in [0, 1]."""

    def __init__(self, root: Path, names: list[str]) -> None:
        self.pairs: list[tuple[torch.Tensor, torch.Tensor, str]] = []
        self.references: dict[str, torch.Tensor] = {}
        for attack_dir in list_folders(root / "attacked"):
            stems = {f.stem: f for f in sorted(attack_dir.iterdir())}
            for name in names:
                attacked_file = stems.get(Path(name).stem)
                if attacked_file is None:
                    continue
                if name not in self.references:
                    self.references[name] = as_uint8(load_image(root / "reference" / name))
                reference = self.references[name]
                attacked = as_uint8(load_image(attacked_file))
                if reference.shape == attacked.shape:
                    self.pairs.append((reference, attacked, attack_dir.name))
        if not self.pairs:
            raise SystemExit(f"no (reference, attacked) pairs of equal size under {root}")

    def crops(
        self, count: int, size: int, generator: torch.Generator, flag: str = "--crop"
    ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """``count`` aligned ``size`` px crops (smaller images are skipped), float in [0, 1],
        and each crop's attack; ``flag`` names the option to lower when no pair is big enough."""
        usable = [p for p in self.pairs if min(p[0].shape[-2:]) >= size]
        if not usable:
            raise SystemExit(f"no pair is at least {size} px: lower {flag}")
        clean, attacked, names = [], [], []
        for _ in range(count):
            ref, adv, name = usable[int(torch.randint(len(usable), (), generator=generator))]
            top, left = random_window(ref, size, generator)
            clean.append(ref[:, top : top + size, left : left + size])
            attacked.append(adv[:, top : top + size, left : left + size])
            names.append(name)
        return torch.stack(clean) / 255.0, torch.stack(attacked) / 255.0, names


def split_pairs_dataset(root: Path, every: int = 10) -> tuple[list[str], list[str]]:
    """Reference names of a competition-layout dataset: ``(train, held out)``, every
    ``every``-th sorted name held out (at least one)."""
    names = sorted(p.name for p in list_images(root / "reference"))
    if len(names) < 2:
        raise SystemExit(f"{root / 'reference'} needs at least 2 images")
    held = names[every // 2 :: every] or names[:1]
    return [n for n in names if n not in held], held


def gains(scores: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image Gain in %: ``|scores - reference| / reference * 100``, shape ``(B,)``."""
    return ((scores - reference).abs() / reference.abs().clamp_min(1e-6)).flatten() * 100


def gain(scores: torch.Tensor, reference: torch.Tensor) -> float:
    """The benchmark's Gain in %: the mean of ``gains``."""
    return float(gains(scores, reference).mean())


class Validation:
    """Fixed attacked crops of held-out images and the Gain of the default purifier on them;
    ``labels`` names each crop's attack, for the per-attack Gain (``"gain/<attack>"``)."""

    def __init__(
        self,
        metric: MetricModel,
        clean: torch.Tensor,
        attacked: torch.Tensor,
        labels: list[str],
        seed: int,
    ) -> None:
        if len(labels) != len(attacked):
            raise ValueError(f"{len(labels)} labels for {len(attacked)} attacked crops")
        clean, attacked = clean.to(metric.device), attacked.to(metric.device)
        self.metric, self.clean, self.attacked, self.seed = metric, clean, attacked, seed
        self.rows = {
            label: torch.tensor([name == label for name in labels], device=clean.device)
            for label in dict.fromkeys(labels)
        }  # each attack's crops, in the order the attacks come
        with torch.no_grad():
            self.reference = metric(clean)
            self.undefended = gain(metric(attacked), self.reference)

    def __call__(self, model: PixelUnshuffleUNet, scheduler_config: dict) -> dict[str, float]:
        """Gain (%) of purified attacked and clean crops, PSNR (dB) of purified vs clean, and
        the leak (``scripts.leak_probe.leaks``: both passes draw the same noise), overall and
        per attack."""
        scheduler, timesteps = make_scheduler(
            "ddpm", VALIDATION_T_STAR, VALIDATION_STEPS, "uniform", scheduler_config
        )
        model = model.to(self.clean.device)  # an EMA copy is made on the CPU
        results = {"undefended_gain": round(self.undefended, 3)}
        outputs = {}
        with torch.no_grad():
            for key, images in (("gain", self.attacked), ("clean_gain", self.clean)):
                generator = torch.Generator().manual_seed(self.seed)
                outputs[key] = run_purification(images, model, scheduler, timesteps, generator)
                per_image = gains(self.metric(outputs[key]), self.reference)
                results[key] = round(float(per_image.mean()), 3)
                if key == "gain":
                    mse = (outputs[key] - self.clean).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
                    results["psnr"] = round(float((-10 * mse.log10()).mean()), 3)
                    for label, rows in self.rows.items():
                        results[f"gain/{label}"] = round(float(per_image[rows].mean()), 3)
        per_leak = leaks(outputs["gain"], outputs["clean_gain"], self.attacked, self.clean)
        results["leak"] = round(float(per_leak.nanmean()), 4)
        for label, rows in self.rows.items():
            results[f"leak/{label}"] = round(float(per_leak[rows].nanmean()), 4)
        return results


def validation_set(
    paths: list[Path], metric: MetricModel, size: int, seed: int, attacks: list[str]
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Centre crops of ``paths`` attacked by each of ``attacks`` (defaults, seeded):
    ``(clean, attacked, labels)``, images ``(N * attacks, 3, s, s)`` in [0, 1] and each
    row's attack name. An attack's seed depends on its name, not on the list."""
    clean = centre_crops(paths, size).to(metric.device)
    attacked, labels = [], []
    for name in tqdm(attacks, desc="validation attacks"):
        generator = torch.Generator().manual_seed(seed + VALIDATION_SEED_OFFSETS[name])
        attacked.append(make_attack(name, metric)(clean, generator))
        labels += [name] * len(clean)
    return clean.repeat(len(attacks), 1, 1, 1), torch.cat(attacked), labels


def load_metrics(device: torch.device | str, paths: list[Path] | None) -> list[MetricModel]:
    """Frozen ``MetricModel``s of ``paths`` (default: the one default metric), in order."""
    metrics = []
    for path in paths or [None]:
        metric = MetricModel(device, path).eval()
        for parameter in metric.parameters():
            parameter.requires_grad_(False)
        metrics.append(metric)
    return metrics


def pick(options: Sequence[T], generator: torch.Generator) -> T:
    """One of ``options`` drawn with ``generator``; a single option draws nothing, so a
    one-metric run keeps the random stream it always had."""
    if len(options) == 1:
        return options[0]
    return options[int(torch.randint(len(options), (), generator=generator))]


def consistency_loss(
    metrics: Sequence[Callable[[torch.Tensor], torch.Tensor]],
    purified: torch.Tensor,
    clean: torch.Tensor,
) -> torch.Tensor:
    """Mean over ``metrics`` of ``score_consistency_loss(metric(purified), metric(clean))``;
    images ``(B, 3, H, W)`` in [0, 1], the clean scores are constants."""
    total = purified.new_zeros(())
    for metric in metrics:
        with torch.no_grad():
            reference = metric(clean)
        total = total + score_consistency_loss(metric(purified), reference)
    return total / len(metrics)


def main(argv: list[str] | None = None) -> int:
    return run_script(parse_args, train, argv, "finetune_bridge.py")


def train(args: argparse.Namespace, command: str, stop_signal: list[int]) -> int:
    """The fine-tuning run; returns the exit code (0 when ``--output`` was written)."""
    check_paths_exist(args)
    run = DenoiserRun(args, command, stop_signal, logger)
    version = args.version or run.output.name
    metrics = load_metrics(run.device, args.metric_checkpoint)
    metric = metrics[0]  # makes the validation crops and scores them
    # each process of a data-parallel run draws its own pairs
    generator = torch.Generator().manual_seed(args.seed + run.accelerator.process_index)

    if args.pairs:
        train_names, held_names = split_pairs_dataset(args.pairs)
        fixed = FixedPairs(args.pairs, train_names)
        held = FixedPairs(args.pairs, held_names)
    if args.pairs and args.train_dir is None:
        # the user's own references (training split, already decoded) feed the clean prior
        train_images = list(fixed.references.values())
    else:
        train_dir = args.train_dir or (args.data or default_data_dir()) / "clean" / "train"
        all_paths = [
            p for p in list_images(train_dir, recursive=True) if p.name not in TUNING_IMAGES
        ]
        # with --pairs, validation holds out pairs; the clean images all feed the prior
        train_paths, holdout_paths = holdout_split(all_paths, 0 if args.pairs else args.holdout)
        train_images = load_images_uint8(train_paths, "loading images", skip_unreadable=True)
    crops = RandomCrops(train_images, args.crop, generator)
    prior_crops = RandomCrops(crops.images, args.prior_crop, generator)
    if args.pairs:
        clean_val, attacked_val, val_labels = held.crops(
            4 * len(held.pairs),
            min(args.val_crop, 256),
            torch.Generator().manual_seed(args.seed),
            flag="--val-crop",
        )
        logger.info(
            "pairs from %s: %d train, %d held-out pairs",
            args.pairs,
            len(fixed.pairs),
            len(held.pairs),
        )
        data_info = {"pairs": str(args.pairs.resolve()), "held_out": held_names}
    else:
        fixed = None
        clean_val, attacked_val, val_labels = validation_set(
            holdout_paths, metric, args.val_crop, args.seed, args.val_attacks
        )
        data_info = {
            "data_folder": str(train_dir.resolve()),
            "num_images": len(crops.images),
            "excluded": sorted(TUNING_IMAGES),
            "holdout_images": [p.name for p in holdout_paths],
        }
    validation = Validation(metric, clean_val, attacked_val, val_labels, args.seed)
    logger.info(
        "validation: %d crops, undefended gain %.2f %%", len(clean_val), validation.undefended
    )

    init = args.init or newest_release(WEIGHTS_DIR)
    verify_manifest(init)
    model = PixelUnshuffleUNet.from_pretrained(init, local_files_only=True)
    scheduler = training_scheduler()
    scheduler_config = dict(scheduler.config)
    logger.info("fine-tuning %s", init)
    init_validation = validation(model.eval(), scheduler_config)
    logger.info("validation of the starting weights %s", init_validation)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    ema = EMAModel(model.parameters(), decay=args.ema_decay)
    model, optimizer = run.prepare(model, optimizer, ema, generator)

    attack_sets = [
        RandomAttacks(
            each,
            args.attacks,
            eps_range=(args.eps_range[0] / 255, args.eps_range[1] / 255),
            max_steps=args.max_attack_steps,
            eot_prob=args.eot_prob,
        )
        for each in metrics
    ]
    pool = PairPool(args.pool_size)
    prior_sampler = TimestepSampler(scheduler.config.num_train_timesteps)
    chains = {
        t: make_scheduler("ddpm", t, args.chain_steps, "uniform", scheduler_config)
        for t in range(args.chain_t_star[0], args.chain_t_star[1] + 1)
    }
    last_validation = init_validation
    if run.step > 0:  # resumed: the checkpoint's weights, not the starting ones
        last_validation = validation(run.ema_model(), scheduler_config)
        logger.info("step %d validation %s", run.step, last_validation)

    def refill(count: int) -> None:
        if fixed is not None:
            clean, attacked, names = fixed.crops(count, args.crop, generator)
            name = ",".join(sorted(set(names)))
        else:
            clean = (crops.batch(count).to(run.device) + 1.0) / 2.0
            attacked, name = pick(attack_sets, generator).attack(clean, generator)
        pool.add(clean, attacked, name)

    def info() -> dict[str, Any]:
        return {
            "training": {
                "kind": "bridge fine-tuning (attacked -> clean), scripts/finetune_bridge.py",
                "init": str(init),
                "metric": [str(m) for m in args.metric_checkpoint or [DEFAULT_METRIC]],
                **data_info,
                "attacks": args.attacks if fixed is None else "fixed pairs",
                "steps": run.step,
                "wall_time_seconds": round(run.progress.seconds, 1),
                "command": command,
                "sessions": run.progress.sessions,
                "options": {
                    k: json_ready(v)
                    for k, v in vars(args).items()
                    if k not in ("output", "run_dir", "resume")
                },
                "software": {
                    "diffusers": diffusers.__version__,
                    "accelerate": accelerate.__version__,
                    "torch": torch.__version__,
                },
                "validation": last_validation,
                "init_validation": init_validation,
            },
            "model": {"class": "PixelUnshuffleUNet", **run.model_config},
        }

    with tqdm(desc="filling pair pool", total=args.pool_size) as bar:
        while len(pool) < args.pool_size:
            refill(min(args.refresh * 2, args.pool_size - len(pool)))
            bar.n = len(pool)
            bar.refresh()

    sums: dict[str, float] = {}
    window = 0
    bar = run.progress_bar("bridge fine-tuning")
    while not run.should_stop():
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(args, run.step, run.fraction_done())
        refill(args.refresh)
        clean, attacked = pool.sample(args.batch_size, generator)
        keep_clean = torch.rand(args.batch_size, generator=generator) < args.clean_fraction
        attacked = torch.where(keep_clean.view(-1, 1, 1, 1), clean, attacked)
        clean, attacked = clean.to(run.device), attacked.to(run.device)
        timesteps = torch.randint(args.t_max, (args.batch_size,), generator=generator)
        terms = {
            "bridge": bridge_loss(
                model, scheduler, clean * 2 - 1, attacked * 2 - 1, timesteps, generator,
                args.snr_gamma, args.detail_weight, args.detail_block,
            ).loss
        }  # fmt: skip
        if args.prior_weight > 0:
            prior_clean = prior_crops.batch(args.prior_batch).to(run.device)
            prior_t = prior_sampler.sample(args.prior_batch, generator)
            terms["prior"] = args.prior_weight * epsilon_mse_loss(
                model, scheduler, prior_clean, prior_t, generator
            )
        if args.metric_weight > 0:
            low, high = args.chain_t_star
            t_star = int(torch.randint(low, high + 1, (), generator=generator))
            chain_scheduler, kept = chains[t_star]
            n = min(args.chain_batch, args.batch_size)
            purified = run_purification(attacked[:n], model, chain_scheduler, kept, generator)
            terms["metric"] = args.metric_weight * consistency_loss(metrics, purified, clean[:n])
        loss = sum(terms.values())
        run.optimizer_step(loss, model, optimizer)
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + value.item()
        window += 1
        if run.step % args.log_every == 0:
            means = {k: round(v / window, 5) for k, v in sums.items()}
            logger.info(
                "step %d %s lr %.2e pool linf %.4f elapsed %.1f min",
                run.step,
                means,
                optimizer.param_groups[0]["lr"],
                pool.mean_linf(),
                run.elapsed_minutes(),
            )
            bar.set_postfix(means)
            sums, window = {}, 0
        if run.step % args.val_every == 0:
            last_validation = validation(run.ema_model(), scheduler_config)
            logger.info("step %d validation %s", run.step, last_validation)
        if run.step % args.checkpoint_every == 0:
            run.checkpoint(info(), version)

    last_validation = validation(run.ema_model(), scheduler_config)
    logger.info("final validation at step %d: %s", run.step, last_validation)
    if run.accelerator.is_main_process:
        report = write_report(run.run_dir / "report.md", info()["training"], run.output)
        logger.info("wrote %s", report)
    return run.finish(info, version, last_validation)


def write_report(path: Path, training: dict[str, Any], output: Path) -> Path:
    """A markdown report of a run: its data, its held-out split and every validation figure of
    the starting and the fine-tuned weights side by side; returns ``path``."""
    before, after = training["init_validation"], training["validation"]
    held = training.get("held_out") or training.get("holdout_images") or []
    data = training.get("pairs") or training.get("data_folder")
    lines = [
        "# Bridge fine-tuning report",
        "",
        "Generated by `scripts/finetune_bridge.py`.",
        "",
        f"- Command: `{training['command']}`",
        f"- Starting weights: `{training['init']}`; output: `{output}`",
        f"- Steps: {training['steps']}, {training['wall_time_seconds'] / 60:.1f} min",
        f"- Metric(s): {', '.join(f'`{m}`' for m in training['metric'])}",
        f"- Data: `{data}`; attacks: {training['attacks']}",
        f"- Held out ({len(held)}): {', '.join(held)}",
        "",
        f"Validation on crops of the held-out images, purified at t*={VALIDATION_T_STAR} with "
        f"{VALIDATION_STEPS} DDPM steps and a fixed seed (a fixed probe, not the shipped "
        "defaults; for those run `scripts/benchmark.py --defenses none,ddpm,ddpm@OUTPUT` on "
        "held-out data). Gain in %, lower is better; leak: share of the attack that passes "
        "the purifier (`scripts/leak_probe.py`), lower is better; PSNR in dB against the "
        "clean crops.",
        "",
        "| figure | starting weights | fine-tuned |",
        "|---|---|---|",
    ]
    for key in dict.fromkeys([*before, *after]):
        lines.append(f"| {key} | {before.get(key, 'n/a')} | {after.get(key, 'n/a')} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic("\n".join(lines) + "\n", path)
    return path

