"""The competition's face of the Linearity metric: ``MetricModel(device, model_path)`` takes
float NCHW images in [0, 1] and returns a ``(B, 1)`` score, higher is better, differentiable,
any HxW. The network and checkpoint loading live in ``metrics.linearity``, the stand-ins in
``metrics.standin``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from common.devices import resolve_device
from common.image_checks import check_images
from metrics import standin
from metrics.linearity import CHECKPOINT_NAME, IMAGENET_MEAN, IMAGENET_STD, load_iqa_model

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent


def default_checkpoint(checkpoint_dir: str | Path | None = None) -> Path:
    """``p1q2.pth`` in ``checkpoint_dir`` (default: beside this file)."""
    return Path(checkpoint_dir or ROOT) / CHECKPOINT_NAME


class MetricModel(nn.Module):
    """The competition's Linearity wrapper: ``(B, 3, H, W)`` in [0, 1] -> ``(B, 1)`` score.

    ``model_path=None`` uses ``p1q2.pth`` beside this file if it exists, else the stand-in
    metric shipped under ``weights/`` (with one logged warning); a folder path loads a
    stand-in metric saved in that folder (``metrics.standin.save_standin``). Higher is better.
    The network's weights are frozen: gradients flow to the input, never into the weights.
    """

    lower_better = False

    def __init__(self, device: torch.device | str = "cpu", model_path: str | Path | None = None):
        super().__init__()
        self.device = resolve_device(device)
        path = Path(model_path) if model_path is not None else default_checkpoint()
        is_standin = path.is_dir()
        if model_path is None and not path.is_file():
            logger.warning(
                "%s not found: using the stand-in metric %s (Linearity's design and heads, "
                "trained on CLIVE). Put the real p1q2.pth beside model.py to use it.",
                path,
                standin.STANDIN_DIR.name,
            )
            path, is_standin = standin.STANDIN_DIR, True
        if is_standin:
            self.model, self.k, self.b = standin.load_standin(self.device, path)
            # a stand-in has one name however it is reached (a dataset made with the default
            # metric resumes with the folder named explicitly, and vice versa)
            self.name = standin.standin_name(path)
        else:
            self.model, self.k, self.b = load_iqa_model(path, self.device)
            self.name = path.name
        self.model.to(self.device).eval().requires_grad_(False)  # gradients reach the input only
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.to(self.device)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Score float ``(B, 3, H, W)`` images in [0, 1] (any float dtype, any ``H, W >= 1``);
        returns float32 ``(B, 1)`` on the metric's device, higher = better (images elsewhere
        are moved there). ``ValueError`` for anything else (see ``image_checks``: no silent
        grey/RGBA/uint8 conversion)."""
        check_images(image, "image")
        x = (image.to(device=self.mean.device, dtype=self.mean.dtype) - self.mean) / self.std
        return self.model(x)[-1] * self.k[0] + self.b[0]
