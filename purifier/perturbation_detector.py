"""A small CNN that estimates how strongly an image has been perturbed, to steer purification.

``PerturbationDetector`` maps float ``(B, 3, H, W)`` images in [0, 1] to ``(B,)`` estimates of
the perturbation's RMS in 1/255 units (about 0 for a natural photo, 2-10 for the attack suite
at its budgets). It sees the image and a fixed high-pass residual (image minus its 3x3 mean),
as steganalysis detectors do (Fridrich & Kodovsky, "Rich models for steganalysis of digital
images", 2012), runs a few strided convolutions and pools the features by their spatial mean
and mean square over the whole image. Both statistics are sums over positions, so
``estimate`` can visit a large image in tiles and still give (up to tile borders) the answer
of one pass. The purifier picks each image's noise level from the estimate
(``PurifierConfig.t_star_max``) and can leave images below its ``gate`` untouched (Metzen et
al., "On detecting adversarial perturbations", ICLR 2017, detect with a small network trained
on the attacks' output).

A detector folder holds ``model.safetensors``, ``detector.json`` (the layer widths) and
``manifest.json``; ``scripts/train_detector.py`` makes it.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from common.atomic_write import staged_folder
from common.image_checks import check_images
from common.weights_manifest import MANIFEST, verify_manifest, write_manifest
from purifier.weights import newest_folder

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "detector.json"
RELEASE_PATTERN = re.compile(r"detector-v(\d+)")
TRAIN_COMMAND = "python scripts/train_detector.py --output {folder}"
DEFAULT_WIDTHS = (24, 32, 48, 64)
ESTIMATE_TILE = 1024
"""Largest side ``estimate`` feeds the network at once (bounds its memory on huge photos)."""


class MissingDetectorError(FileNotFoundError):
    """No usable detector weights folder."""


def high_pass(images: torch.Tensor) -> torch.Tensor:
    """``images`` minus their 3x3 box mean (edge pixels repeated): ``(B, 3, H, W)``."""
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    return images - F.avg_pool2d(padded, 3, stride=1)


class PerturbationDetector(nn.Module):
    """Perturbation strength of float ``(B, 3, H, W)`` images in [0, 1] -> ``(B,)``, >= 0,
    in 1/255 units (RMS of the added perturbation). Differentiable; any ``H, W >= 1``.

    Args:
        widths: channels of the four convolutions; the last three have stride 2.
    """

    def __init__(self, widths: tuple[int, ...] = DEFAULT_WIDTHS) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"widths must be four positive integers, got {widths}")
        self.widths = widths
        layers: list[nn.Module] = []
        channels = 6
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(channels, width, 3, stride=1 if i == 0 else 2, padding=1)]
            layers += [nn.LeakyReLU(0.1)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(2 * channels, 64), nn.LeakyReLU(0.1), nn.Linear(64, 1))

    def pooled_sums(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(sum of features, sum of squared features, positions)`` over the feature map:
        ``(B, C)``, ``(B, C)`` and an int."""
        x = torch.cat([images * 2 - 1, high_pass(images) * 16], dim=1)
        # channels-last: oneDNN's convolutions copy NCHW to it otherwise (1.8x faster on CPU)
        features = self.features(x.contiguous(memory_format=torch.channels_last))
        positions = features.shape[-2] * features.shape[-1]
        return features.sum((2, 3)), features.square().sum((2, 3)), positions

    def head_from_sums(
        self, total: torch.Tensor, squares: torch.Tensor, count: int
    ) -> torch.Tensor:
        """The ``(B,)`` strength from pooled sums (see ``pooled_sums``)."""
        mean = total / count
        rms = (squares / count).clamp_min(1e-12).sqrt()
        return F.softplus(self.head(torch.cat([mean, rms], dim=1))).squeeze(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head_from_sums(*self.pooled_sums(images))

    def estimate(self, images: torch.Tensor, tile: int = ESTIMATE_TILE) -> torch.Tensor:
        """``forward`` for any size: images larger than ``tile`` on a side are visited in
        non-overlapping tiles whose pooled sums are added. ``ValueError`` for bad images."""
        check_images(images)
        if isinstance(tile, bool) or not isinstance(tile, int) or tile < 8:
            raise ValueError(f"tile must be an int >= 8, got {tile!r}")
        images = images.to(next(self.parameters()).device, torch.float32)
        height, width = images.shape[-2:]
        if max(height, width) <= tile:
            return self(images)
        total = squares = None
        count = 0
        for top in range(0, height, tile):
            for left in range(0, width, tile):
                part = self.pooled_sums(images[..., top : top + tile, left : left + tile])
                total = part[0] if total is None else total + part[0]
                squares = part[1] if squares is None else squares + part[1]
                count += part[2]
        return self.head_from_sums(total, squares, count)


def save_detector(
    model: PerturbationDetector, folder: str | Path, version: str, **info: Any
) -> Path:
    """Write ``model`` as a detector folder (weights, ``detector.json``, manifest with
    ``info``); ``FileExistsError`` if ``folder`` already holds released weights."""
    folder = Path(folder)
    if (folder / MANIFEST).exists():
        raise FileExistsError(f"{folder} already holds released weights; choose a new folder")
    with staged_folder(folder, replace=False) as staging:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, staging / WEIGHTS_FILE, metadata={"format": "pt"})
        config = {
            "widths": list(model.widths),
            "output": "RMS of the perturbation, 1/255 units",
            "input": "float NCHW RGB in [0, 1]",
        }
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        write_manifest(staging, "perturbation-detector", version, **info)
    return folder


WITHOUT_DETECTOR = "or set gate=0 and t_star_max=0 to purify every image from t_star."
"""How to run without a detector, for the errors that report a missing one."""


def load_detector(folder: str | Path, device: str | torch.device = "cpu") -> PerturbationDetector:
    """The detector in ``folder`` (manifest checked), in eval mode on ``device``, parameters
    frozen. ``MissingDetectorError`` if absent, ``ValueError`` if the files do not fit."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise MissingDetectorError(
            f"no detector weights in {folder} ({MANIFEST} missing). Train them with "
            f"`{TRAIN_COMMAND.format(folder=folder)}`, {WITHOUT_DETECTOR}"
        )
    verify_manifest(folder)
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
        model = PerturbationDetector(tuple(config["widths"]))
        model.load_state_dict(load_file(folder / WEIGHTS_FILE), strict=True)
    except (OSError, KeyError, TypeError, json.JSONDecodeError, SafetensorError) as err:
        raise ValueError(f"cannot load the detector in {folder}: {err}") from err
    except RuntimeError as err:
        raise ValueError(f"{folder / WEIGHTS_FILE} does not fit the detector: {err}") from err
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    logger.info("loaded perturbation detector from %s", folder)
    return model.to(device).eval()


def newest_detector(weights_dir: str | Path) -> Path:
    """The released ``detector-v<N>`` folder with the highest N in ``weights_dir``;
    ``MissingDetectorError`` if there is none."""
    newest = newest_folder(weights_dir, RELEASE_PATTERN)
    if newest is None:
        raise MissingDetectorError(
            f"no released detector (a detector-v<N> folder with {MANIFEST}) in {weights_dir}. "
            f"Train one with `{TRAIN_COMMAND.format(folder=Path(weights_dir) / 'detector-v1')}`, "
            f"{WITHOUT_DETECTOR}"
        )
    return newest


def resolve_detector(
    detector: str | Path | None, weights: str | Path, weights_dir: str | Path
) -> Path:
    """``detector`` if given, else the newest released ``detector-v<N>`` beside the denoiser
    folder ``weights``, else the newest in ``weights_dir`` (the shipped one; logged), as
    ``resolve_weights`` picks the denoiser. ``MissingDetectorError`` if neither has one."""
    if detector is not None:
        return Path(detector)
    beside = Path(weights).parent
    try:
        return newest_detector(beside)
    except MissingDetectorError:
        if beside.resolve() == Path(weights_dir).resolve():
            raise
    shipped = newest_detector(weights_dir)
    logger.info("no detector beside %s; using %s", weights, shipped)
    return shipped
