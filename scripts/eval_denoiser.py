#!/usr/bin/env python
"""Gaussian-denoising check of a trained DDPM denoiser on Kodak24, plus its speed.

    python scripts/eval_denoiser.py --weights weights/ddpm-v1 --json runs/eval.json
    python scripts/eval_denoiser.py --weights runs/ddpm-v1/ema_latest --crop 128 --threads 1

For each sigma (default 10/255 and 25/255, seeded noise, not clipped) the denoiser predicts
x0 in one network call at the matching timestep; PSNR (scikit-image, data_range=1) is
compared with the noisy input, a Gaussian blur (std 1 px) and a 3x3 median filter on the same
noisy images. Speed: the UNet forward on a 512x384 image as a ratio to one forward of the
Linearity ResNeXt-101 (random init, eval, no_grad), both measured here (median of repeats).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from scipy.ndimage import median_filter
from skimage.filters import gaussian
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffusion import denoise_one_shot, load_denoiser, sigma_to_timestep  # noqa: E402
from diffusion.gaussian_benchmark import add_gaussian_noise, mean_psnr  # noqa: E402
from image_io import load_image  # noqa: E402
from paths import default_data_dir  # noqa: E402

BLUR_STD_PX = 1.0
TIMING_SHAPE = (1, 3, 384, 512)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", type=Path, required=True, help="denoiser weights folder")
    parser.add_argument("--data", type=Path, default=None, help="data root (default: $PURIFY_DATA)")
    parser.add_argument("--crop", type=int, default=None, help="centre crop N x N for speed")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[10.0, 25.0], help="x/255")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (median)")
    parser.add_argument("--no-timing", action="store_true", help="skip the speed comparison")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    if args.crop is not None and args.crop < 8:
        parser.error("--crop must be >= 8")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if any(not 0 < s < 255 for s in args.sigmas):
        parser.error("--sigmas must be in (0, 255)")
    return args


def load_kodak(data_dir: Path, crop: int | None) -> list[torch.Tensor]:
    """Kodak24 as ``(1, 3, H, W)`` tensors in [0, 1], centre-cropped to ``crop`` if given."""
    paths = sorted((data_dir / "clean" / "eval").glob("kodim*.png"))
    if not paths:
        raise SystemExit(f"no kodim*.png under {data_dir / 'clean' / 'eval'}")
    images = []
    for path in paths:
        image = load_image(path)
        if crop is not None:
            height, width = image.shape[-2:]
            size_h, size_w = min(crop, height), min(crop, width)
            top, left = (height - size_h) // 2, (width - size_w) // 2
            image = image[:, top : top + size_h, left : left + size_w]
        images.append(image[None])
    return images


def blur_baseline(noisy: torch.Tensor) -> torch.Tensor:
    """Gaussian blur (std ``BLUR_STD_PX``) per channel of ``(1, 3, H, W)``."""
    array = rearrange(noisy[0].double(), "c h w -> h w c").numpy()
    out = gaussian(array, sigma=BLUR_STD_PX, channel_axis=-1, preserve_range=True)
    return rearrange(torch.from_numpy(np.ascontiguousarray(out)), "h w c -> 1 c h w").float()


def median_baseline(noisy: torch.Tensor) -> torch.Tensor:
    """3x3 median per channel of ``(1, 3, H, W)``."""
    return torch.from_numpy(median_filter(noisy.numpy(), size=(1, 1, 3, 3), mode="reflect"))


def denoising_table(
    model: torch.nn.Module,
    scheduler_config: dict[str, Any],
    images: list[torch.Tensor],
    sigmas255: list[float],
    seed: int,
) -> dict[str, dict[str, float]]:
    """Mean PSNR per method for each sigma (keyed ``"sigma10"`` etc.)."""
    table = {}
    for sigma255 in sigmas255:
        sigma = sigma255 / 255.0
        generator = torch.Generator().manual_seed(seed + round(sigma255 * 100))
        scores: dict[str, list[float]] = {
            "noisy": [],
            "ddpm_one_shot": [],
            "blur": [],
            "median": [],
        }
        for clean in tqdm(images, desc=f"sigma {sigma255:g}/255", leave=False):
            noisy = add_gaussian_noise(clean, sigma, generator)
            with torch.no_grad():
                denoised = denoise_one_shot(noisy, model, scheduler_config, sigma)
            scores["noisy"].append(mean_psnr(noisy, clean))
            scores["ddpm_one_shot"].append(mean_psnr(denoised, clean))
            scores["blur"].append(mean_psnr(blur_baseline(noisy), clean))
            scores["median"].append(mean_psnr(median_baseline(noisy), clean))
        row = {name: round(statistics.mean(v), 3) for name, v in scores.items()}
        row["timestep"] = sigma_to_timestep(sigma)
        table[f"sigma{sigma255:g}"] = row
    return table


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed_ratio(model: torch.nn.Module, repeats: int) -> dict[str, float]:
    """UNet forward vs one Linearity forward on a 512x384 image (seconds and ratio)."""
    from model import IQAModel

    image = torch.rand(TIMING_SHAPE, generator=torch.Generator().manual_seed(0))
    linearity = IQAModel().eval()
    with torch.no_grad():
        unet_s = median_seconds(lambda: model(image * 2 - 1, 20), repeats)
        linearity_s = median_seconds(lambda: linearity(image), repeats)
    return {
        "unet_seconds": round(unet_s, 4),
        "linearity_seconds": round(linearity_s, 4),
        "ratio": round(unet_s / linearity_s, 3),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, scheduler_config = load_denoiser(args.weights, "cpu")
    images = load_kodak(args.data or default_data_dir(), args.crop)
    weight_files = list(Path(args.weights).glob("*.safetensors"))
    results: dict[str, Any] = {
        "weights": str(args.weights),
        "images": len(images),
        "crop": args.crop,
        "seed": args.seed,
        "parameters_millions": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "weights_mb": round(sum(f.stat().st_size for f in weight_files) / 1e6, 2),
        "threads": torch.get_num_threads(),
        "psnr": denoising_table(model, scheduler_config, images, args.sigmas, args.seed),
    }
    if not args.no_timing:
        results["speed_512x384"] = speed_ratio(model, args.repeats)

    crop = f", centre crop {args.crop}" if args.crop else ""
    print(f"Kodak24 ({len(images)} images{crop}), PSNR dB, one-shot x0 at the matching step")
    print(f"{'sigma':>8} {'t':>4} {'noisy':>7} {'ddpm':>7} {'blur':>7} {'median':>7}")
    for key, row in results["psnr"].items():
        print(
            f"{key[5:] + '/255':>8} {row['timestep']:>4} {row['noisy']:>7.2f} "
            f"{row['ddpm_one_shot']:>7.2f} {row['blur']:>7.2f} {row['median']:>7.2f}"
        )
    if "speed_512x384" in results:
        speed = results["speed_512x384"]
        print(
            f"speed 512x384: UNet {speed['unet_seconds']:.3f} s, Linearity "
            f"{speed['linearity_seconds']:.3f} s, ratio {speed['ratio']:.3f} "
            f"({results['threads']} threads)"
        )
    print(f"{results['parameters_millions']} M parameters, {results['weights_mb']} MB weights")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
