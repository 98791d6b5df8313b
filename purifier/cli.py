"""Purify every image in a folder (recursively) into another folder with the diffusion purifier.

    purify photos/ purified/
    purify photos/ purified/ --t-star 80 --steps 2 --seed 0 --keep-format
    python scripts/purify.py photos/ purified/ --tile 512 --tile-overlap 32 --threads 1

Names and sub-folders are kept; outputs are PNG unless ``--keep-format``. Existing outputs are
skipped (an interrupted run resumes) unless ``--overwrite``; writes are atomic (temp file +
rename), and temp files a killed run left beside its outputs are removed. No output is ever
written onto an input or inside the input folder. Unreadable files are reported and skipped;
grey images are replicated to RGB and alpha is dropped. With ``--seed`` each image's noise
depends only on the seed and its path relative to the input folder (images are then purified
one at a time), so a resumed or re-batched run writes the same pixels. Images larger than
``--tile`` are processed tile by tile with blended overlaps (peak 2.1 GiB for a 4000 x 3000
photo: the blend keeps whole-image float64 sums, 32 bytes per pixel, the runs' start noise is
drawn for the whole photo, 48 bytes per pixel, and one tile is purified at a time);
``--tile 0`` purifies whole images (about 330 bytes per pixel, ~4 GB for a 4000 x 3000
photo). Exit code 1 if any image failed, 2 if nothing could start.

Data-parallel: started N times by ``accelerate launch --multi_gpu --num_processes N`` (or
``torchrun --nproc_per_node N``), each process purifies its own shard of the files (balanced
by pixel count) on its own device (``--device cuda`` -> ``cuda:<process index>``); one
progress bar and one summary, on the main process. With ``--seed`` the outputs are those of a
single-process run.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
from accelerate import PartialState
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from common.cli_options import device_name, positive_int
from common.data_parallel import (
    gather_objects,
    process_device,
    process_group,
    take_shard,
)
from common.image_io import ImageReadError, load_image, save_image, temp_file_target
from common.paths import WEIGHTS_DIR
from common.seeds import name_seed
from purifier import (
    DiffusionPurifier,
    MissingDetectorError,
    MissingWeightsError,
    resolve_detector,
    resolve_weights,
)
from purifier.config import config_from_options, load_default_config
from purifier.folder_plan import (
    FolderPlan,
    Job,
    batches_by_size,
    pixel_counts,
    plan_folder,
)
from purifier.options import add_purifier_knobs

logger = logging.getLogger("purify")
MIN_TILE = 16
"""Smallest ``--tile``: a smaller tile would be mostly the denoiser's own padding."""
DEFAULT_TILE, DEFAULT_TILE_OVERLAP = 512, 32


def _default_knobs() -> str:
    """The knobs a run without knob flags uses, for ``--help``."""
    try:
        config = load_default_config()
    except ValueError as err:
        return f"unreadable ({err})"
    return ", ".join(f"{name}={value}" for name, value in config.to_dict().items())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="purify",
        description=__doc__.split("\n\n")[0],
        epilog="Knobs left out (--t-star ... --precision) come from purifier/defaults.json "
        "(else the provisional defaults): " + _default_knobs() + ". A given --t-star moves "
        "the default --t-star-max ramp with it; --sampler ddim snaps the default --t-star "
        "to a DDIM grid.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input_dir", type=Path, help="folder of images (searched recursively)")
    parser.add_argument("output_dir", type=Path, help="where purified images go (not inside input)")
    parser.add_argument(
        "--device", type=device_name, default="cpu", help="torch device (default: cpu)"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=1, help="same-size images per batch"
    )
    add_purifier_knobs(parser)
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="reproducible noise: each image's noise is seeded by this and its relative path",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="denoiser folder (default: newest weights/ddpm-v*)",
    )
    parser.add_argument(
        "--detector",
        type=Path,
        default=None,
        help="perturbation-detector folder for --gate and --t-star-max "
        "(default: the newest detector-v* beside --weights, else weights/detector-v*)",
    )
    parser.add_argument(
        "--tile", type=int, default=DEFAULT_TILE, help="tile side in px; 0 disables tiling"
    )
    parser.add_argument(
        "--tile-overlap", type=int, default=DEFAULT_TILE_OVERLAP, help="blended overlap in px"
    )
    parser.add_argument("--keep-format", action="store_true", help="keep each input's format")
    parser.add_argument("--overwrite", action="store_true", help="redo existing outputs")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and summary only")
    args = parser.parse_args(argv)
    problem = tiling_error(args.tile, args.tile_overlap)
    if problem:
        parser.error(problem)
    return args


def tiling_error(tile: int, overlap: int) -> str | None:
    """Why ``--tile``/``--tile-overlap`` cannot tile an image, or None when they can."""
    if tile < 0 or overlap < 0:
        return "--tile and --tile-overlap must be >= 0"
    if 0 < tile < MIN_TILE:
        return f"--tile must be 0 (whole images) or >= {MIN_TILE} px"
    if tile and not 0 < overlap < tile / 2:
        return "--tile-overlap must be >= 1 and less than half of --tile"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with process_group(args.device) as state:
        quiet = args.quiet or not state.is_main_process  # other processes: warnings only
        logging.basicConfig(
            level=logging.WARNING if quiet else logging.INFO,
            format="%(asctime)s %(levelname)s %(message)s",
        )
        if args.threads:
            torch.set_num_threads(args.threads)
        try:
            config = config_from_options(args)
            plan = plan_folder(args.input_dir, args.output_dir, args.keep_format, args.overwrite)
            weights = resolve_weights(args.weights, WEIGHTS_DIR)
            device = process_device(state, args.device)
            detector = (
                resolve_detector(args.detector, weights, WEIGHTS_DIR)
                if config.uses_detector
                else None
            )
            purifier = DiffusionPurifier.from_pretrained(
                weights, device, config, args.seed, detector
            )
        except (ValueError, MissingWeightsError, MissingDetectorError) as err:
            logger.error("%s", err)
            return 2
        with logging_redirect_tqdm():
            return run(args, plan, purifier, state)


def run(
    args: argparse.Namespace,
    plan: FolderPlan,
    purifier: DiffusionPurifier,
    state: PartialState | None = None,
) -> int:
    """Purify this process's shard of the planned jobs (all of them when alone); the main
    process logs the plan and prints the summary of all processes. Every process returns 0 if
    nothing failed in any process, else 1."""
    state = state if state is not None else PartialState()
    main_process, count = state.is_main_process, state.num_processes
    if main_process:
        logger.info("%s; %d to do, %d already done", purifier, len(plan.jobs), len(plan.existing))
        if plan.ignored:
            names = ", ".join(str(p) for p in plan.ignored[:5])
            more = f" and {len(plan.ignored) - 5} more" if len(plan.ignored) > 5 else ""
            logger.warning("ignoring %d non-image file(s): %s%s", len(plan.ignored), names, more)
        removed = remove_leftover_temp_files(plan.jobs + plan.existing)
        if removed:
            logger.info("removed %d temp file(s) left by an interrupted run", removed)
        for job, reason in plan.rejected:
            logger.warning("skipping %s: %s", job.source, reason)
    # Every process has planned (so all saw the same outputs on disk) and the stale temp files
    # are gone before anyone writes.
    state.wait_for_everyone()
    jobs = plan.jobs
    if count > 1:
        jobs = take_shard(jobs, state.process_index, count, pixel_counts(jobs))
    failed = 0
    batches, unreadable = batches_by_size(jobs, args.batch_size)
    for _job, reason in unreadable:
        logger.warning("skipping %s", reason)
        failed += 1
    processed = 0
    started = time.perf_counter()
    desc = "purifying" if count == 1 else f"purifying (process 0 of {count})"
    total = sum(len(b) for b in batches)
    show_bar = main_process and not args.quiet
    with tqdm(total=total, unit="image", desc=desc, disable=not show_bar) as bar:
        for batch in batches:
            done = purify_batch(batch, purifier, args.tile, args.tile_overlap, args.seed, show_bar)
            processed += done
            failed += len(batch) - done
            bar.update(len(batch))
    seconds = time.perf_counter() - started
    shards = gather_objects(state, (processed, failed, seconds))
    processed = sum(done for done, _, _ in shards)
    failed = sum(bad for _, bad, _ in shards) + len(plan.rejected)
    seconds = max(wall for _, _, wall in shards)
    per_image = f"{seconds / processed:.2f} s/image" if processed else "n/a"
    if main_process:
        print(
            f"processed {processed}, skipped {len(plan.existing)} (output exists), "
            f"failed {failed}, ignored {len(plan.ignored)} non-image file(s); {per_image}"
            + (f" with {count} processes" if count > 1 else "")
        )
    return 1 if failed else 0


def remove_leftover_temp_files(jobs: list[Job]) -> int:
    """Delete the temp files an interrupted ``save_image`` left beside the targets of ``jobs``
    (other files are never touched); returns how many were removed."""
    targets = {job.target for job in jobs}
    removed = 0
    for folder in {target.parent for target in targets}:
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if temp_file_target(path) in targets and path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def purify_batch(
    batch: list[Job],
    purifier: DiffusionPurifier,
    tile: int,
    overlap: int,
    seed: int | None = None,
    progress: bool = True,
) -> int:
    """Load, purify and save one batch of same-size images; returns how many were written.
    Unreadable images, a failed purification and unwritable files are logged and left out.
    With a ``seed``, each image is purified alone with a generator seeded by ``seeds.name_seed``
    of its relative path.
    ``progress``: show a bar over the tiles of large images."""
    loaded: list[tuple[Job, torch.Tensor]] = []
    for job in batch:
        try:
            loaded.append((job, load_image(job.source)))
        except ImageReadError as err:
            logger.warning("skipping %s", err)
    if not loaded:
        return 0
    try:
        with torch.no_grad():
            if seed is None:
                images = torch.stack([image for _, image in loaded])
                purified = list(_purify(images, purifier, None, tile, overlap, progress))
            else:
                purified = [
                    _purify(
                        image[None], purifier, _generator(seed, job.key), tile, overlap, progress
                    )[0]
                    for job, image in loaded
                ]
    except (RuntimeError, ValueError) as err:  # e.g. out of memory: the other batches go on
        names = ", ".join(str(job.source) for job, _ in loaded)
        logger.error("cannot purify %s: %s: %s", names, type(err).__name__, err)
        return 0
    written = 0
    for (job, _), image in zip(loaded, purified, strict=True):
        try:
            save_image(image, job.target)
            written += 1
        except (OSError, ValueError) as err:
            logger.warning("cannot write %s: %s", job.target, err)
    return written


def _generator(seed: int, key: str) -> torch.Generator:
    return torch.Generator().manual_seed(name_seed(seed, key))


def _purify(
    images: torch.Tensor,
    purifier: DiffusionPurifier,
    generator: torch.Generator | None,
    tile: int,
    overlap: int,
    progress: bool = True,
) -> torch.Tensor:
    if not tile:
        return purifier(images, generator)
    return purifier.tiled(images, tile, overlap, generator, desc="tiles" if progress else None)

