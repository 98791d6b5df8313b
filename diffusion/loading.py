"""Load a shipped denoiser folder (config.json + safetensors + scheduler_config.json +
manifest.json), checking every file against its manifest first. Local folders only."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler

from common.weights_manifest import verify_manifest
from diffusion.denoiser import PixelUnshuffleUNet

logger = logging.getLogger(__name__)


def load_denoiser(
    folder: str | Path, device: str | torch.device = "cpu"
) -> tuple[PixelUnshuffleUNet, dict[str, Any]]:
    """``(model in eval mode on device, weights frozen, scheduler config dict)`` from a
    weights folder: a purifier differentiates through the model to its input only (fine-tuning
    loads the folder with ``from_pretrained`` instead).

    Raises ``weights_manifest.WeightsIntegrityError`` if a file is missing or altered and
    ``ValueError`` if the folder does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"no weights folder at {folder}")
    manifest = verify_manifest(folder)
    model = PixelUnshuffleUNet.from_pretrained(folder, local_files_only=True)
    scheduler_config = dict(DDPMScheduler.load_config(folder, local_files_only=True))
    logger.info("loaded denoiser %s version %s", manifest.get("name"), manifest.get("version"))
    return model.to(device).eval().requires_grad_(False), scheduler_config
