"""Universal adversarial perturbation: one additive pattern, the same for every image.

Moosavi-Dezfooli, Fawzi, Fawzi and Frossard, "Universal Adversarial Perturbations",
CVPR 2017; for quality metrics as in the MSU benchmark (Shumitskaya et al., "Universal
Perturbation Attack on Differentiable No-Reference Image- and Video-Quality Metrics",
BMVC 2022): a ``(3, S, S)`` pattern trained on clean images (``scripts/train_uap.py``),
tiled (or resized) to the image size and added with an L-inf bound of ``10/255``.

Weights live in ``weights/uap-<metric>-v1/perturbation.safetensors`` with a manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import repeat
from safetensors.torch import load_file, save_file

from attacks.base import Attack
from common.paths import WEIGHTS_DIR
from common.weights_manifest import MANIFEST, verify_manifest

EPS = 10 / 255
PERTURBATION_FILE = "perturbation.safetensors"
PERTURBATION_KEY = "perturbation"
VERSION = "v1"
FIT_MODES = ("tile", "resize")


def metric_tag(metric: object) -> str | None:
    """Short name of a metric for weight folders: ``MetricModel.name`` without suffix."""
    name = getattr(metric, "name", None)
    return Path(name).stem if isinstance(name, str) and name else None


def default_uap_dir(tag: str, version: str = VERSION) -> Path:
    """``weights/uap-<tag>-<version>``."""
    return WEIGHTS_DIR / f"uap-{tag}-{version}"


def save_perturbation(perturbation: torch.Tensor, path: str | Path, **metadata: str) -> None:
    """Write a ``(3, S, S')`` perturbation to a safetensors file (float32, CPU)."""
    _check_perturbation(perturbation)
    tensor = perturbation.detach().to("cpu", torch.float32).contiguous()
    save_file(
        {PERTURBATION_KEY: tensor}, str(path), metadata={k: str(v) for k, v in metadata.items()}
    )


def load_perturbation(path: str | Path, verify: bool = True) -> torch.Tensor:
    """Read a perturbation file; checks the folder's manifest when ``verify`` and one exists."""
    path = Path(path)
    if path.is_dir():
        path = path / PERTURBATION_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no universal perturbation at {path}: train one with "
            "`python scripts/train_uap.py` or pass perturbation=/path="
        )
    if verify and (path.parent / MANIFEST).is_file():
        verify_manifest(path.parent)
    tensors = load_file(str(path))
    if PERTURBATION_KEY not in tensors:
        raise ValueError(f"{path} has no '{PERTURBATION_KEY}' tensor (keys: {sorted(tensors)})")
    perturbation = tensors[PERTURBATION_KEY]
    _check_perturbation(perturbation)
    return perturbation


def fit_perturbation(
    perturbation: torch.Tensor, height: int, width: int, mode: str
) -> torch.Tensor:
    """``(3, S, S')`` -> ``(3, height, width)`` by tiling from the top-left or bilinear resize."""
    if mode == "tile":
        s_h, s_w = perturbation.shape[-2:]
        reps_h, reps_w = -(-height // s_h), -(-width // s_w)
        tiled = repeat(perturbation, "c h w -> c (rh h) (rw w)", rh=reps_h, rw=reps_w)
        return tiled[:, :height, :width]
    if mode == "resize":
        return F.interpolate(
            perturbation[None], size=(height, width), mode="bilinear", align_corners=False
        )[0]
    raise ValueError(f"mode must be one of {FIT_MODES}, got {mode!r}")


def _check_perturbation(perturbation: object) -> None:
    if (
        not isinstance(perturbation, torch.Tensor)
        or perturbation.dim() != 3
        or (perturbation.shape[0] != 3)
    ):
        shape = tuple(perturbation.shape) if isinstance(perturbation, torch.Tensor) else None
        raise ValueError(f"a perturbation must be a (3, H, W) tensor, got {shape}")
    if not perturbation.is_floating_point() or not torch.isfinite(perturbation).all():
        raise ValueError("a perturbation must be a finite float tensor")


class UAP(Attack):
    """Add a stored universal perturbation, clipped to ``[-eps, eps]``, to every image.

    ``perturbation`` (a ``(3, S, S')`` tensor) or ``path`` (file or folder) gives the
    pattern; with neither, ``weights/uap-<metric.name>-v1`` is loaded (manifest checked).
    ``mode``: ``"tile"`` (MSU) or ``"resize"``. The attack is input-agnostic and takes no
    gradients, so EOT and defense settings do not apply (they matter when training it).
    """

    name = "uap"

    def __init__(
        self,
        metric: Callable,
        *,
        eps: float = EPS,
        perturbation: torch.Tensor | None = None,
        path: str | Path | None = None,
        mode: str = "tile",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("steps", 1)
        kwargs.setdefault("alpha", 1.0)
        super().__init__(metric, eps=eps, **kwargs)
        if mode not in FIT_MODES:
            raise ValueError(f"mode must be one of {FIT_MODES}, got {mode!r}")
        if perturbation is not None and path is not None:
            raise ValueError("give either perturbation= or path=, not both")
        if perturbation is None:
            if path is None:
                tag = metric_tag(metric)
                if tag is None:
                    raise ValueError(
                        "this metric has no .name to find its UAP under weights/: "
                        "pass perturbation= or path="
                    )
                path = default_uap_dir(tag)
            self.source = str(path)
            perturbation = load_perturbation(path)
        else:
            _check_perturbation(perturbation)
            self.source = "tensor"
        self.perturbation = perturbation.detach().clamp(-self.eps, self.eps)
        self.mode = mode

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "eps": self.eps,
            "mode": self.mode,
            "size": tuple(self.perturbation.shape[-2:]),
            "source": self.source,
        }

    def attack(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        h, w = images.shape[-2:]
        delta = fit_perturbation(self.perturbation.to(images), h, w, self.mode)
        return (images + delta.clamp(-self.eps, self.eps)).clamp(0.0, 1.0)
