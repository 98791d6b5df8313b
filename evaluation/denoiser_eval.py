"""Gaussian-denoising check of one or more trained DDPM denoisers, plus their speed.

    python scripts/eval_denoiser.py --weights weights/ddpm-v1 --json runs/eval.json
    python scripts/eval_denoiser.py --weights weights/ddpm-v1 runs/sizes/*/out --threads 1
    python scripts/eval_denoiser.py --weights weights/ddpm-v1 MY_FT --images MY_HELDOUT

Images: Kodak24 from the data root, or every image under ``--images`` (e.g. held-out photos
of a user's own domain, to measure what a ``train_ddpm.py --init`` fine-tune buys). For each
sigma (default 10/255 and 25/255, seeded noise, not clipped) every denoiser predicts x0 in one
network call at the matching timestep, on the same noisy images; PSNR (scikit-image,
data_range=1) is compared with the noisy input, a Gaussian blur (std 1 px) and a 3x3 median
filter. Speed: each UNet forward on a 512x384 image as a ratio to one forward of the Linearity
ResNeXt-101 (random init, eval, no_grad), timed in the same run with the repeats interleaved
so machine load affects all of them alike (median of repeats).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from scipy.ndimage import median_filter
from skimage.filters import gaussian
from tqdm import tqdm

from common.cli_options import positive_int, report_file
from common.image_io import centre_crop, list_images, load_image
from common.paths import default_data_dir
from diffusion import denoise_one_shot, load_denoiser, sigma_to_timestep
from diffusion.gaussian_benchmark import add_gaussian_noise, mean_psnr

BLUR_STD_PX = 1.0
TIMING_SHAPE = (1, 3, 384, 512)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--weights", type=Path, nargs="+", required=True, help="denoiser weights folder(s)"
    )
    parser.add_argument("--data", type=Path, default=None, help="data root (default: $PURIFY_DATA)")
    parser.add_argument(
        "--images", type=Path, default=None, help="evaluate every image under this folder"
    )
    parser.add_argument("--crop", type=int, default=None, help="centre crop N x N for speed")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[10.0, 25.0], help="x/255")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=positive_int, default=None)
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (median)")
    parser.add_argument("--no-timing", action="store_true", help="skip the speed comparison")
    parser.add_argument("--json", type=report_file, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    if args.crop is not None and args.crop < 8:
        parser.error("--crop must be >= 8")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if any(not 0 < s < 255 for s in args.sigmas):
        parser.error("--sigmas must be in (0, 255)")
    return args


def kodak_paths(data_dir: Path) -> list[Path]:
    """Kodak24 (``clean/eval/kodim*.png``) under the data root."""
    paths = sorted((data_dir / "clean" / "eval").glob("kodim*.png"))
    if not paths:
        raise SystemExit(f"no kodim*.png under {data_dir / 'clean' / 'eval'}")
    return paths


def load_images(paths: list[Path], crop: int | None) -> list[torch.Tensor]:
    """Images as ``(1, 3, H, W)`` tensors in [0, 1], centre-cropped to ``crop`` if given."""
    return [centre_crop(load_image(path), crop)[None] for path in paths]


def blur_baseline(noisy: torch.Tensor) -> torch.Tensor:
    """Gaussian blur (std ``BLUR_STD_PX``) per channel of ``(1, 3, H, W)``."""
    array = rearrange(noisy[0].double(), "c h w -> h w c").numpy()
    out = gaussian(array, sigma=BLUR_STD_PX, channel_axis=-1, preserve_range=True)
    return rearrange(torch.from_numpy(np.ascontiguousarray(out)), "h w c -> 1 c h w").float()


def median_baseline(noisy: torch.Tensor) -> torch.Tensor:
    """3x3 median per channel of ``(1, 3, H, W)``."""
    return torch.from_numpy(median_filter(noisy.numpy(), size=(1, 1, 3, 3), mode="reflect"))


def denoising_table(
    models: dict[str, tuple[torch.nn.Module, dict[str, Any]]],
    images: list[torch.Tensor],
    sigmas255: list[float],
    seed: int,
) -> dict[str, dict[str, float]]:
    """Mean PSNR per method for each sigma (keyed ``"sigma10"`` etc.): ``noisy``, ``blur``,
    ``median`` and one entry per model name, all on the same noisy images."""
    table = {}
    for sigma255 in sigmas255:
        sigma = sigma255 / 255.0
        generator = torch.Generator().manual_seed(seed + round(sigma255 * 100))
        scores: dict[str, list[float]] = {"noisy": [], "blur": [], "median": []}
        scores.update({name: [] for name in models})
        for clean in tqdm(images, desc=f"sigma {sigma255:g}/255", leave=False):
            noisy = add_gaussian_noise(clean, sigma, generator)
            scores["noisy"].append(mean_psnr(noisy, clean))
            scores["blur"].append(mean_psnr(blur_baseline(noisy), clean))
            scores["median"].append(mean_psnr(median_baseline(noisy), clean))
            for name, (model, scheduler_config) in models.items():
                with torch.no_grad():
                    denoised = denoise_one_shot(noisy, model, scheduler_config, sigma)
                scores[name].append(mean_psnr(denoised, clean))
        row = {name: round(statistics.mean(v), 3) for name, v in scores.items()}
        row["timestep"] = sigma_to_timestep(sigma)
        table[f"sigma{sigma255:g}"] = row
    return table


def interleaved_median_seconds(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median wall time of each function; every round times all of them once (after one
    warm-up call each), so a change in machine load hits every function alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def speed_ratios(models: dict[str, torch.nn.Module], repeats: int) -> dict[str, Any]:
    """Each UNet forward vs one Linearity forward on a 512x384 image (seconds and ratio)."""
    from metrics.linearity import IQAModel

    image = torch.rand(TIMING_SHAPE, generator=torch.Generator().manual_seed(0))
    linearity = IQAModel().eval()
    fns: dict[str, Callable[[], Any]] = {"linearity": lambda: linearity(image)}
    for name, model in models.items():
        fns[name] = lambda model=model: model(image * 2 - 1, 20)
    with torch.no_grad():
        seconds = interleaved_median_seconds(fns, repeats)
    linearity_s = seconds.pop("linearity")
    return {
        "linearity_seconds": round(linearity_s, 4),
        "unet_seconds": {name: round(s, 4) for name, s in seconds.items()},
        "ratio": {name: round(s / linearity_s, 3) for name, s in seconds.items()},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [str(w) for w in args.weights]
    if len(set(names)) != len(names):
        raise SystemExit("--weights lists a folder twice")
    loaded = {str(w): load_denoiser(w, "cpu") for w in args.weights}
    if args.images is None:
        paths, source = kodak_paths(args.data or default_data_dir()), "Kodak24"
    else:
        try:
            paths, source = list_images(args.images, recursive=True), str(args.images)
        except ValueError as err:
            raise SystemExit(str(err)) from err
        if not paths:
            raise SystemExit(f"no images under {args.images}")
    images = load_images(paths, args.crop)
    results: dict[str, Any] = {
        "images": len(images),
        "source": source,
        "crop": args.crop,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "models": {
            name: {
                "parameters_millions": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
                "weights_mb": round(
                    sum(f.stat().st_size for f in Path(name).glob("*.safetensors")) / 1e6, 2
                ),
            }
            for name, (model, _) in loaded.items()
        },
        "psnr": denoising_table(loaded, images, args.sigmas, args.seed),
    }
    if not args.no_timing:
        speed = speed_ratios({name: model for name, (model, _) in loaded.items()}, args.repeats)
        results["speed_512x384"] = speed
    print_report(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def print_report(results: dict[str, Any]) -> None:
    """The figures of ``main`` as two plain-text tables (stdout)."""
    crop = f", centre crop {results['crop']}" if results["crop"] else ""
    print(f"{results['source']} ({results['images']} images{crop}), PSNR dB")
    print(f"{'sigma':>8} {'t':>4} {'noisy':>7} {'blur':>7} {'median':>7}")
    for key, row in results["psnr"].items():
        print(
            f"{key[5:] + '/255':>8} {row['timestep']:>4} {row['noisy']:>7.2f} "
            f"{row['blur']:>7.2f} {row['median']:>7.2f}"
        )
    speed = results.get("speed_512x384")
    sigmas = list(results["psnr"])
    header = " ".join(f"{key[5:] + '/255':>8}" for key in sigmas)
    timed = f"; speed on 512x384 ({results['threads']} threads)" if speed else ""
    print(f"one-shot x0 at the matching step{timed}")
    print(f"{'weights':<40} {'M params':>8} {'MB':>6} {header} {'UNet s':>7} {'x Lin.':>6}")
    for name, info in results["models"].items():
        psnrs = " ".join(f"{results['psnr'][key][name]:>8.2f}" for key in sigmas)
        timing = "      -      -"
        if speed is not None:
            timing = f"{speed['unet_seconds'][name]:>7.3f} {speed['ratio'][name]:>6.3f}"
        print(
            f"{name:<40} {info['parameters_millions']:>8.2f} {info['weights_mb']:>6.1f} "
            f"{psnrs} {timing}"
        )
    if speed is not None:
        print(f"Linearity forward: {speed['linearity_seconds']:.3f} s")

