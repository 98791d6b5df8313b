#!/usr/bin/env python
"""Write ``notebooks/quickstart.ipynb`` (nbformat 4) from the cells below, reproducibly.

    python scripts/build_notebook.py            # rewrite the notebook
    python scripts/build_notebook.py --check    # exit 1 if the notebook is out of date

The notebook loads the metric, attacks a small Kodak crop, purifies it with a seeded
``Defense`` and shows clean / attacked / purified side by side with their scores. Edit the
cells here, not in Jupyter; ``tests/test_notebook.py`` runs the code cells
(``QUICKSTART_FAST=1``: tiny random metric, tiny images, ``QUICKSTART_WEIGHTS`` denoiser).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"

INTRO = """\
# Quick start: purify an attacked image

This notebook loads the Linearity metric (the real `p1q2.pth` beside `model.py` if present,
else the project's stand-in), attacks a small Kodak crop with I-FGSM so that the metric
over-rates it, purifies the attacked image with the diffusion defense (`defense.Defense`,
seeded so the run is reproducible) and shows the three images side by side with their
scores.

Scores: **f** is the metric score (higher = better quality), **gain** is
|f(clean) - f(x)| / f(clean) x 100 (how far the attack moved the score; the defense should
bring it back near 0), **Q** is the competition's quality (SSIM + PSNR/80) / 2 against the
clean image.

Run it from the repository (any folder inside it). Needs matplotlib (`pip install -e '.[plot]'`)."""

SETUP = """\
import os
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from einops import rearrange

# The repository root: the first folder upwards that holds defense.py.
ROOT = next((p for p in [Path.cwd(), *Path.cwd().parents] if (p / "defense.py").is_file()), None)
if ROOT is None:
    raise RuntimeError("run this notebook from inside the iqa-purify repository")
sys.path.insert(0, str(ROOT))

# QUICKSTART_FAST=1 (used by tests/test_notebook.py): a tiny random metric, tiny images, and
# the denoiser folder in QUICKSTART_WEIGHTS. Leave it unset for the real thing.
FAST = os.environ.get("QUICKSTART_FAST") == "1"
DEVICE = "cpu"
SEED = 0
CROP = 48 if FAST else 192"""

METRIC_MD = """\
## 1. The metric

`MetricModel` takes float `(B, 3, H, W)` images in [0, 1] and returns `(B, 1)` scores."""

METRIC = """\
from metrics.linearity import IMAGENET_MEAN, IMAGENET_STD, IQAModel, TrunkSpec
from model import MetricModel


class TinyMetric(torch.nn.Module):
    \"\"\"MetricModel's interface on a tiny random Linearity network (fast tests only).\"\"\"

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(SEED)
            spec = TrunkSpec((1, 1, 1, 1), groups=8, width_per_group=4, stem_width=32)
            self.model = IQAModel(spec).eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)[-1] * 10 + 50


metric = TinyMetric() if FAST else MetricModel(DEVICE)
metric.eval()"""

IMAGE_MD = """\
## 2. A clean image

A centre crop of a Kodak photo: from `samples/` if the repository ships one, else from the
data folder (`$PURIFY_DATA` or `../shared/data`), else a synthetic picture."""

IMAGE = """\
from common.image_io import centre_crop, load_image
from common.paths import default_data_dir

samples = sorted((ROOT / "samples").glob("**/reference/*.png"))
kodak = default_data_dir() / "clean" / "eval" / "kodim23.png"
source = samples[0] if samples else kodak if kodak.is_file() else None
if source is not None:
    clean = centre_crop(load_image(source), CROP).unsqueeze(0)
else:
    y, x = torch.meshgrid(torch.linspace(0, 1, CROP), torch.linspace(0, 1, CROP), indexing="ij")
    clean = torch.stack([x, y, 0.5 + 0.5 * torch.sin(12 * x * y)]).clamp(0, 1).unsqueeze(0)
print(f"clean image {tuple(clean.shape)} from {source or 'a synthetic pattern'}")"""

ATTACK_MD = """\
## 3. Attack it

I-FGSM climbs the metric's gradient in small signed steps inside an L-infinity ball, so the
change is hard to see but the score goes up."""

ATTACK = """\
from attacks import make_attack

attack = make_attack("ifgsm", metric, steps=2 if FAST else 10)
attacked = attack(clean, torch.Generator().manual_seed(SEED))
print(attack)"""

PURIFY_MD = """\
## 4. Purify it

`Defense` estimates how strongly the image was perturbed (a small detector CNN), noises it to
a step of the diffusion schedule between `t_star` (clean-looking) and `t_star_max` (strongly
perturbed) and runs a reverse step of the denoiser, averaged over a few noise draws. Its
knobs come from `purifier/defaults.json` (written by `scripts/tune.py`); `seed` makes the run
reproducible (leave it out in deployment: fresh noise on every call is part of the defense).
`defense.purifier.plan(attacked)` shows the noise level it chose."""

PURIFY = """\
from defense import Defense

weights = os.environ.get("QUICKSTART_WEIGHTS")  # None: the newest released weights/ddpm-v<N>
defense = Defense(DEVICE, seed=SEED, weights=weights)
with torch.no_grad():
    purified = defense.apply_defense(attacked)
print(defense)
print("noise level chosen for the attacked image:", defense.purifier.plan(attacked))"""

SCORES_MD = """\
## 5. Compare"""

SCORES = """\
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def quality(reference: torch.Tensor, image: torch.Tensor) -> float:
    \"\"\"The competition's Quality, (SSIM + PSNR / 80) / 2, PSNR capped at 80 dB.\"\"\"
    ref = rearrange(reference[0], "c h w -> h w c").numpy()
    img = rearrange(image[0], "c h w -> h w c").numpy()
    identical = (ref == img).all()
    psnr = 80.0 if identical else min(80.0, peak_signal_noise_ratio(ref, img, data_range=1))
    ssim = structural_similarity(ref, img, channel_axis=2, data_range=1)
    return (ssim + psnr / 80) / 2


images = {"clean": clean, "attacked": attacked, "purified": purified}
with torch.no_grad():
    scores = {name: float(metric(x)) for name, x in images.items()}
gains = {name: abs(scores["clean"] - s) / scores["clean"] * 100 for name, s in scores.items()}
qualities = {name: quality(clean, x) for name, x in images.items()}

fig, axes = plt.subplots(1, 3, figsize=(12, 4.6))
for ax, (name, x) in zip(axes, images.items()):
    ax.imshow(rearrange(x[0], "c h w -> h w c").numpy())
    title = f"f={scores[name]:.2f}  gain {gains[name]:.2f} %  Q={qualities[name]:.3f}"
    ax.set_title(f"{name}\\n{title}")
    ax.axis("off")
plt.show()"""

NEXT = """\
## Next

- Score a whole attacked dataset like the competition does:
  `python test.py --data_dir samples/kodak-attacked --output_dir outputs/sample --device cpu`
- Compare with the classical defenses and DiffPure: build the public set once
  (`python scripts/make_dataset.py runs/public-set`, about 25 min), then
  `python scripts/benchmark.py` (see `BENCHMARKS.md`).
- Re-tune the purifier's knobs for your machine's time budget: `python scripts/tune.py`."""

CELLS: tuple[tuple[str, str], ...] = (
    ("markdown", INTRO),
    ("code", SETUP),
    ("markdown", METRIC_MD),
    ("code", METRIC),
    ("markdown", IMAGE_MD),
    ("code", IMAGE),
    ("markdown", ATTACK_MD),
    ("code", ATTACK),
    ("markdown", PURIFY_MD),
    ("code", PURIFY),
    ("markdown", SCORES_MD),
    ("code", SCORES),
    ("markdown", NEXT),
)


def _source_lines(text: str) -> list[str]:
    lines = text.split("\n")
    return [line + "\n" for line in lines[:-1]] + [lines[-1]]


def build_notebook() -> dict[str, Any]:
    """The notebook as an nbformat 4.5 dict (no outputs, stable cell ids)."""
    cells = []
    for i, (kind, text) in enumerate(CELLS):
        cell: dict[str, Any] = {
            "cell_type": kind,
            "id": f"quickstart-{i:02d}",
            "metadata": {},
            "source": _source_lines(text),
        }
        if kind == "code":
            cell["execution_count"] = None
            cell["outputs"] = []
        cells.append(cell)
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def notebook_text() -> str:
    return json.dumps(build_notebook(), indent=1, ensure_ascii=False) + "\n"


def code_cells(notebook: dict[str, Any]) -> list[str]:
    """The source of every code cell of an nbformat 4 notebook, in order."""
    return ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=NOTEBOOK)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    text = notebook_text()
    if args.check:
        current = args.output.read_text() if args.output.is_file() else ""
        if current != text:
            print(f"{args.output} is out of date: run python scripts/build_notebook.py")
            return 1
        print(f"{args.output} is up to date")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
