"""Peak memory of purifying one large photo on CPU (issue 6, part 6: <= 4 GB at 4000 x 3000).

Sizes are in GiB (2^30 bytes); the target "4 GB" is read as 4 GiB, and the exact byte count is
reported too (4 GiB = 4.29e9 bytes).

Usage::

    python scripts/peak_memory.py [--mode defense|purify|both] [--height 3000 --width 4000]
        [--weights weights/ddpm-v1] [--t-star T] [--steps S] [--tile 512 --tile-overlap 32]
        [--threads 1] [--seed 0] [--json runs/memory.json]

Each measurement runs in a fresh Python subprocess, which builds a smooth random image (seeded
low-resolution noise upsampled bicubically) and purifies it with the shipped defaults:

- ``defense``: ``Defense("cpu").apply_defense`` on the whole image under ``torch.no_grad()``
  (what the competition harness calls);
- ``purify``: ``scripts/purify.py`` on the image saved as PNG, with its default tiling (or
  ``--tile``), decode and encode included.

Reported per mode (JSON): the subprocess's peak resident set size (``ru_maxrss`` of the whole
process: imports, model, image, purification), its resident size just before purification,
and the purification's wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.cli_options import positive_float, positive_int, report_file
from purifier.options import noise_level

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "peak_memory.py"
MODES = ("defense", "purify")
TARGET_GIB = 4.0
PHOTO_HEIGHT, PHOTO_WIDTH = 3000, 4000
GIB = 1024**3


# --- measuring (parent side) ------------------------------------------------------------------


def measure_peak_memory(
    mode: str,
    height: int = PHOTO_HEIGHT,
    width: int = PHOTO_WIDTH,
    *,
    weights: str | Path | None = None,
    t_star: int | None = None,
    steps: int | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    threads: int = 1,
    seed: int = 0,
    timeout: float | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """Purify a synthetic ``height x width`` image in a fresh subprocess (``mode``:
    ``"defense"`` or ``"purify"``) and return its figures: ``peak_rss_bytes``/``_gb``,
    ``baseline_rss_gib``, ``seconds``, ``within_target`` (<= ``TARGET_GIB``) and the settings.
    ``tile``/``overlap`` apply to ``purify`` only (None: the CLI's defaults); ``precision``
    is the denoiser's (None: the defaults' ``"auto"``). ValueError for
    bad options, RuntimeError if the subprocess fails (e.g. killed for lack of memory)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    for name, value in (("height", height), ("width", width), ("threads", threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if mode == "defense" and (tile is not None or overlap is not None):
        raise ValueError("tile/overlap apply to mode 'purify' only")
    argv = [sys.executable, str(SCRIPT), "--child", mode, "--height", str(height)]
    argv += ["--width", str(width), "--threads", str(threads), "--seed", str(seed)]
    for flag, value in (
        ("--weights", weights),
        ("--t-star", t_star),
        ("--steps", steps),
        ("--tile", tile),
        ("--tile-overlap", overlap),
        ("--precision", precision),
    ):
        if value is not None:
            argv += [flag, str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory(prefix="peak-memory-") as tmp:
        result_path = Path(tmp) / "result.json"
        try:
            done = subprocess.run(
                [*argv, "--result", str(result_path)],
                capture_output=True,
                text=True,
                env=env,
                cwd=REPO,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as err:
            raise RuntimeError(f"peak-memory run ({mode}) timed out after {timeout} s") from err
        if done.returncode != 0 or not result_path.is_file():
            tail = "\n".join(done.stderr.strip().splitlines()[-5:])
            raise RuntimeError(
                f"peak-memory run ({mode}) failed with exit code {done.returncode}: {tail}"
            )
        return json.loads(result_path.read_text())


def benchmark_memory(
    weights: str | Path | None = None,
    threads: int = 1,
    height: int = PHOTO_HEIGHT,
    width: int = PHOTO_WIDTH,
) -> list[dict[str, Any]]:
    """Both modes once, for the benchmark; a failed mode gives ``{"mode", "error"}``."""
    results = []
    for mode in MODES:
        try:
            results.append(
                measure_peak_memory(mode, height, width, weights=weights, threads=threads)
            )
        except RuntimeError as err:
            results.append({"mode": mode, "height": height, "width": width, "error": str(err)})
    return results


def memory_markdown(results: Sequence[dict[str, Any]]) -> list[str]:
    """The benchmark's "Memory" section (markdown lines) for ``benchmark_memory`` results."""
    lines = [
        "## Memory",
        "",
        f"Peak resident memory of one fresh process purifying a synthetic photo on CPU "
        f"(`scripts/peak_memory.py`); target <= {TARGET_GIB:g} GiB.",
        "",
        "| Path | Image | Peak RSS (GiB) | Before purifying (GiB) | Time (s) | Target |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        path = DESCRIPTIONS.get(r["mode"], r["mode"])
        if r.get("tile"):
            path += f" (tile {r['tile']}, overlap {r['overlap']})"
        image = f"{r['width']}x{r['height']}"
        if "error" in r:
            lines.append(f"| {path} | {image} | failed: {r['error']} | | | ❌ |")
            continue
        mark = "✅" if r["within_target"] else "❌"
        lines.append(
            f"| {path} | {image} | {r['peak_rss_gib']:.2f} | {r['baseline_rss_gib']:.2f} | "
            f"{r['seconds']:.1f} | {mark} <= {r['target_gib']:g} GiB |"
        )
    return lines


DESCRIPTIONS = {
    "defense": "`Defense.apply_defense`, whole image",
    "purify": "`scripts/purify.py`",
}


# --- the measured process (child side) ----------------------------------------------------------


def smooth_image(height: int, width: int, seed: int = 0) -> Any:
    """A ``(1, 3, height, width)`` float32 image in [0, 1]: seeded uniform noise on a grid of
    ~64 px cells, upsampled bicubically (smooth, photo-like colour blobs)."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(
        (1, 3, math.ceil(height / 64) + 1, math.ceil(width / 64) + 1), generator=generator
    )
    image = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    return image.clamp_(0.0, 1.0)


def rss_bytes() -> int:
    """Current resident set size of this process (``VmRSS``), 0 if unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (``ru_maxrss``: KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    """Build the image, purify it in ``args.child`` mode, return the figures."""
    import torch

    torch.set_num_threads(args.threads)
    if args.child == "defense":
        from defense import Defense

        defense = Defense(
            "cpu",
            t_star=args.t_star,
            steps=args.steps,
            precision=args.precision,
            weights=args.weights,
            seed=args.seed,
        )
        config, weights_dir = defense.config, defense.weights
        image = smooth_image(args.height, args.width, args.seed)
        baseline = rss_bytes()
        start = time.perf_counter()
        with torch.no_grad():
            out = defense.apply_defense(image)
        seconds = time.perf_counter() - start
        if out.shape != image.shape:
            raise RuntimeError(f"the defense changed the shape to {tuple(out.shape)}")
        tile = overlap = None
    else:
        from common.image_io import save_image
        from purifier import cli as purify

        knobs = ["--seed", str(args.seed)]
        for flag, value in (
            ("--weights", args.weights),
            ("--t-star", args.t_star),
            ("--steps", args.steps),
            ("--tile", args.tile),
            ("--tile-overlap", args.tile_overlap),
            ("--precision", args.precision),
        ):
            if value is not None:
                knobs += [flag, str(value)]
        with tempfile.TemporaryDirectory(prefix="peak-memory-photo-") as tmp:
            save_image(
                smooth_image(args.height, args.width, args.seed)[0], Path(tmp) / "in" / "photo.png"
            )
            cli = [str(Path(tmp) / "in"), str(Path(tmp) / "out"), "-q", *knobs]
            options = purify.parse_args(cli)
            tile, overlap = options.tile, options.tile_overlap
            from purifier import resolve_weights
            from purifier.config import config_from_options

            config = config_from_options(options)
            weights_dir = resolve_weights(options.weights, REPO / "weights")
            baseline = rss_bytes()
            start = time.perf_counter()
            code = purify.main(cli)
            seconds = time.perf_counter() - start
            if code != 0 or not (Path(tmp) / "out" / "photo.png").is_file():
                raise RuntimeError(f"scripts/purify.py failed (exit code {code})")
    peak = peak_rss_bytes()
    return {
        "mode": args.child,
        "height": args.height,
        "width": args.width,
        "pixels": args.height * args.width,
        "peak_rss_bytes": peak,
        "peak_rss_gib": peak / GIB,
        "baseline_rss_gib": baseline / GIB,
        "seconds": seconds,
        "target_gib": TARGET_GIB,
        "within_target": peak <= TARGET_GIB * GIB,
        "tile": tile,
        "overlap": overlap,
        "threads": args.threads,
        "seed": args.seed,
        "weights": str(weights_dir),
        "config": config.to_dict(),
        "torch": torch.__version__,
    }


# --- command line -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=(*MODES, "both"), default="both")
    parser.add_argument("--height", type=positive_int, default=PHOTO_HEIGHT)
    parser.add_argument("--width", type=positive_int, default=PHOTO_WIDTH)
    parser.add_argument("--weights", type=Path, default=None, help="denoiser folder")
    parser.add_argument("--t-star", type=noise_level, default=None)
    parser.add_argument("--steps", type=positive_int, default=None)
    parser.add_argument("--tile", type=int, default=None, help="purify mode (default: the CLI's)")
    parser.add_argument("--tile-overlap", type=int, default=None, help="purify mode")
    parser.add_argument(
        "--precision", default=None, help="denoiser arithmetic: auto (default), float32, bfloat16"
    )
    parser.add_argument(
        "--threads", type=positive_int, default=1, help="torch threads of the subprocess"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--timeout", type=positive_float, default=None, help="seconds per measurement"
    )
    parser.add_argument(
        "--json", type=report_file, default=None, help="also write the results here"
    )
    parser.add_argument("--child", choices=MODES, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    return parser


def check_knobs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A usage error, before any subprocess starts, for a knob the measurement would refuse
    (the subprocess imports torch and the defense; this parent does so only to check)."""
    from purifier import resolve_weights
    from purifier.cli import DEFAULT_TILE, DEFAULT_TILE_OVERLAP, tiling_error
    from purifier.config import load_default_config

    try:
        load_default_config().override(
            t_star=args.t_star, steps=args.steps, precision=args.precision
        )
        resolve_weights(args.weights, REPO / "weights")
    except (ValueError, OSError) as err:
        parser.error(str(err))
    if args.mode != "defense":
        tile = DEFAULT_TILE if args.tile is None else args.tile
        overlap = DEFAULT_TILE_OVERLAP if args.tile_overlap is None else args.tile_overlap
        problem = tiling_error(tile, overlap)
        if problem:
            parser.error(problem)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.child:
        result = run_child(args)
        args.result.write_text(json.dumps(result, indent=1) + "\n")
        return 0
    if args.mode == "defense" and (args.tile is not None or args.tile_overlap is not None):
        parser.error("--tile and --tile-overlap apply to --mode purify (or both) only")
    check_knobs(parser, args)
    modes = MODES if args.mode == "both" else (args.mode,)
    results = []
    try:
        for mode in modes:
            tiling = {"tile": args.tile, "overlap": args.tile_overlap} if mode == "purify" else {}
            results.append(
                measure_peak_memory(
                    mode,
                    args.height,
                    args.width,
                    weights=args.weights,
                    t_star=args.t_star,
                    steps=args.steps,
                    threads=args.threads,
                    seed=args.seed,
                    timeout=args.timeout,
                    precision=args.precision,
                    **tiling,
                )
            )
    except (ValueError, RuntimeError) as err:
        raise SystemExit(f"peak_memory.py: error: {err}") from err
    text = json.dumps(results, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0

