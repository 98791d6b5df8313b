"""Training a universal perturbation against a metric (the MSU benchmark's ``uap`` recipe).

Adam on one ``(3, size, size)`` pattern added to random ``size x size`` crops of clean
training images, maximising the mean score; after each step the pattern is clipped to
``[-eps, eps]`` (we train at the bound it is applied with, 10/255).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from attacks.base import check_int, check_number
from common.image_io import load_image, random_window

logger = logging.getLogger(__name__)


@dataclass
class UAPTrainingResult:
    """The trained ``(3, size, size)`` perturbation and the mean score of each epoch."""

    perturbation: torch.Tensor
    epoch_scores: list[float] = field(default_factory=list)
    steps: int = 0
    images_used: int = 0


def random_crop(image: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """A ``(3, size, size)`` crop of ``(3, H, W)`` at a position drawn from ``generator``."""
    top, left = random_window(image, size, generator)
    return image[:, top : top + size, left : left + size]


def crop_batches(
    paths: Sequence[Path], size: int, batch_size: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """One epoch of ``(B, 3, size, size)`` random crops, images in a random order."""
    batch: list[torch.Tensor] = []
    for i in torch.randperm(len(paths), generator=generator).tolist():
        batch.append(random_crop(load_image(paths[i]), size, generator))
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


def usable_images(paths: Sequence[Path], size: int) -> list[Path]:
    """The images at least ``size`` pixels on both sides (others are logged and skipped)."""
    kept = []
    for p in paths:
        with Image.open(p) as img:
            w, h = img.size
        if min(h, w) >= size:
            kept.append(Path(p))
        else:
            logger.warning("skipping %s: %dx%d is smaller than the %d px crop", p, w, h, size)
    return kept


def train_uap(
    metric: Callable[[torch.Tensor], torch.Tensor],
    image_paths: Sequence[str | Path],
    *,
    size: int = 256,
    eps: float = 10 / 255,
    epochs: int = 5,
    batch_size: int = 8,
    lr: float = 1e-3,
    metric_range: float = 100.0,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> UAPTrainingResult:
    """Train a universal perturbation that raises ``metric`` on crops of ``image_paths``.

    Returns a ``(3, size, size)`` float32 CPU tensor in ``[-eps, eps]`` and the history.
    The metric's train/eval mode is restored afterwards.
    """
    check_int("size", size, minimum=1)
    check_int("epochs", epochs, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    check_number("eps", eps, minimum=0.0, strict=True)
    check_number("lr", lr, minimum=0.0, strict=True)
    check_number("metric_range", metric_range, minimum=0.0, strict=True)
    paths = usable_images(list(image_paths), size)
    if not paths:
        raise ValueError(f"no training image is at least {size}x{size}")
    if generator is None:
        generator = torch.Generator()
        generator.seed()
    device = torch.device(device)
    modes = [(m, m.training) for m in metric.modules()] if hasattr(metric, "modules") else []
    for module, _ in modes:
        module.eval()
    perturbation = torch.zeros(1, 3, size, size, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([perturbation], lr=lr)
    result = UAPTrainingResult(perturbation=perturbation.detach(), images_used=len(paths))
    n_batches = -(-len(paths) // batch_size)
    try:
        bar = tqdm(total=epochs * n_batches, desc="uap", disable=not progress)
        with torch.enable_grad(), bar:
            for epoch in range(epochs):
                total, count = 0.0, 0
                for batch in crop_batches(paths, size, batch_size, generator):
                    batch = batch.to(device)
                    score = metric((batch + perturbation).clamp(0.0, 1.0)).reshape(-1)
                    loss = -score.mean() / metric_range
                    optimizer.zero_grad()
                    (grad,) = torch.autograd.grad(loss, perturbation)
                    perturbation.grad = grad
                    optimizer.step()
                    with torch.no_grad():
                        perturbation.clamp_(-eps, eps)
                    total += float(score.detach().sum())
                    count += score.shape[0]
                    result.steps += 1
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, score=f"{total / count:.3f}")
                result.epoch_scores.append(total / count)
                logger.info("uap epoch %d: mean score %.4f", epoch, total / count)
    finally:
        for module, training in modes:
            module.train(training)
    result.perturbation = perturbation.detach()[0].to("cpu", torch.float32)
    return result
