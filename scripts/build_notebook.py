#!/usr/bin/env python
"""Write ``notebooks/quickstart.ipynb`` (nbformat 4) from the cells below and execute it, so the
stored notebook shows what a user opening it sees: the printed scores and the clean /
attacked / purified picture.

    python scripts/build_notebook.py            # rewrite and execute the notebook (~5 s, CPU)
    python scripts/build_notebook.py --check    # exit 1 if its cells are stale or unrun

The notebook loads the metric, attacks a small Kodak crop, purifies it with a seeded
``Defense`` and shows clean / attacked / purified side by side with their scores. Edit the
cells here, not in Jupyter. The cells hold no test switches: ``tests/test_notebook.py`` runs
them as they are, and with a tiny metric and denoiser patched in from outside.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
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

DEVICE = "cpu"
SEED = 0
CROP = 192"""

METRIC_MD = """\
## 1. The metric

`MetricModel` takes float `(B, 3, H, W)` images in [0, 1] and returns `(B, 1)` scores."""

METRIC = """\
from model import MetricModel

metric = MetricModel(DEVICE)
metric.eval()
print(f"metric: {metric.name}")"""

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
origin = source.relative_to(ROOT) if source and source.is_relative_to(ROOT) else source
print(f"clean image {tuple(clean.shape)} from {origin or 'a synthetic pattern'}")"""

ATTACK_MD = """\
## 3. Attack it

I-FGSM climbs the metric's gradient in small signed steps inside an L-infinity ball, so the
change is hard to see but the score goes up."""

ATTACK = """\
from attacks import make_attack

attack = make_attack("ifgsm", metric, steps=10)
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

defense = Defense(DEVICE, seed=SEED)  # the newest released weights/ddpm-v<N>
with torch.no_grad():
    purified = defense.apply_defense(attacked)
print(f"weights {defense.weights.name}: {defense.purifier}")
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
for name in images:
    print(f"{name:>9}: f={scores[name]:6.2f}  gain {gains[name]:5.2f} %  Q={qualities[name]:.3f}")

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


Outputs = list[dict[str, Any]]


def build_notebook(outputs: Sequence[Outputs] | None = None) -> dict[str, Any]:
    """The notebook as an nbformat 4.5 dict with stable cell ids; ``outputs`` (one list per code
    cell, from ``execute``) are stored with execution counts 1, 2, ...; None: unexecuted."""
    cells = []
    code_index = 0
    for i, (kind, text) in enumerate(CELLS):
        cell: dict[str, Any] = {
            "cell_type": kind,
            "id": f"quickstart-{i:02d}",
            "metadata": {},
            "source": _source_lines(text),
        }
        if kind == "code":
            cell["execution_count"] = code_index + 1 if outputs is not None else None
            cell["outputs"] = list(outputs[code_index]) if outputs is not None else []
            code_index += 1
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


def without_outputs(notebook: dict[str, Any]) -> dict[str, Any]:
    """``notebook`` as ``build_notebook()`` writes it unexecuted (to compare the cells)."""
    cells = []
    for cell in notebook["cells"]:
        cell = dict(cell)
        if cell["cell_type"] == "code":
            cell["execution_count"], cell["outputs"] = None, []
        cells.append(cell)
    return {**notebook, "cells": cells}


def code_cells(notebook: dict[str, Any]) -> list[str]:
    """The source of every code cell of an nbformat 4 notebook, in order."""
    return ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]


def _stream(name: str, text: str, root: Path) -> Outputs:
    text = text.replace(f"{root}/", "").replace(str(root), ".")  # no machine paths stored
    return [{"name": name, "output_type": "stream", "text": _source_lines(text)}] if text else []


def execute(sources: Sequence[str], workdir: Path = NOTEBOOK.parent) -> list[Outputs]:
    """Run the code cells in one namespace from ``workdir`` (as Jupyter starts a notebook)
    and collect each cell's outputs: stdout/stderr as streams (the repository's path
    shortened), figures as PNG ``display_data``. Raises whatever a cell raises."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = NOTEBOOK.parent.parent
    namespace: dict[str, Any] = {"__name__": "__main__"}
    results = []
    saved_path, saved_cwd, saved_show = list(sys.path), Path.cwd(), plt.show
    plt.show = lambda *args, **kwargs: None  # figures are collected after each cell
    try:
        os.chdir(workdir)
        for index, source in enumerate(sources):
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                exec(compile(source, f"<cell {index + 1}>", "exec"), namespace)
            outputs = _stream("stdout", out.getvalue(), root)
            outputs += _stream("stderr", err.getvalue(), root)
            for number in plt.get_fignums():
                png = io.BytesIO()
                plt.figure(number).savefig(
                    png, format="png", dpi=80, bbox_inches="tight", metadata={"Software": None}
                )
                outputs.append(
                    {
                        "data": {
                            "image/png": base64.b64encode(png.getvalue()).decode(),
                            "text/plain": ["<Figure>"],
                        },
                        "metadata": {},
                        "output_type": "display_data",
                    }
                )
            plt.close("all")
            results.append(outputs)
    finally:
        plt.show = saved_show
        os.chdir(saved_cwd)
        sys.path[:] = saved_path
    return results


def notebook_text(notebook: dict[str, Any]) -> str:
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def check(path: Path) -> str | None:
    """Why ``path`` is not the current notebook (cells differ from ``CELLS``, or a code cell
    was never run), or None."""
    if not path.is_file():
        return f"{path} does not exist"
    try:
        notebook = json.loads(path.read_text())
        cells = without_outputs(notebook)
    except (json.JSONDecodeError, KeyError, TypeError):
        return f"{path} is not an nbformat 4 notebook"
    if cells != build_notebook():
        return f"{path}: its cells differ from scripts/build_notebook.py"
    if any(c["execution_count"] is None for c in notebook["cells"] if c["cell_type"] == "code"):
        return f"{path}: not executed"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=NOTEBOOK)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    if args.check:
        problem = check(args.output)
        print(problem or f"{args.output} is up to date")
        return 1 if problem else 0
    notebook = build_notebook(execute(code_cells(build_notebook())))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(notebook_text(notebook))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
