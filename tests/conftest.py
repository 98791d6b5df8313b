"""Shared fixtures: a checkpoint in the exact p1q2.pth format, tiny image folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import purifier.config
from common.weights_manifest import write_manifest
from defense import Defense
from diffusion import PixelUnshuffleUNet, training_scheduler
from metrics.linearity import IQAModel, TrunkSpec
from metrics.standin import save_standin
from model import MetricModel
from purifier import PerturbationDetector, PurifierConfig
from purifier.perturbation_detector import save_detector

TINY_DEFENSE_KNOBS = {"t_star": 20, "steps": 2, "precision": "float32"}
"""float32 so pinned outputs and finite-difference checks hold on machines with and without
native bfloat16 (``precision="auto"`` depends on the hardware)."""

P1Q2_K = [0.5, 2.0, 3.0]
P1Q2_B = [10.0, 20.0, 30.0]


@pytest.fixture
def provisional_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The purifier sees its provisional defaults whatever the tuner has written
    (``purifier/defaults.json`` is pointed at a missing file)."""
    monkeypatch.setattr(purifier.config, "DEFAULTS_FILE", tmp_path / "absent.json")


@pytest.fixture(scope="session")
def p1q2_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised Linearity checkpoint in ``p1q2.pth`` format (k/b as lists)."""
    gen = torch.Generator().manual_seed(0)
    model = IQAModel()
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith("running_var"):
            value.copy_(torch.rand(value.shape, generator=gen) + 0.5)
        elif key.endswith("running_mean"):
            value.copy_(torch.randn(value.shape, generator=gen) * 0.1)
    path = tmp_path_factory.mktemp("ckpt") / "p1q2.pth"
    torch.save({"model": state, "k": list(P1Q2_K), "b": list(P1Q2_B)}, path)
    return path


def write_tiny_release(folder: Path, seed: int = 0) -> Path:
    """A loadable denoiser folder (random tiny PixelUnshuffleUNet + schedule + manifest)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = PixelUnshuffleUNet(unshuffle=2, block_out_channels=(8, 16), norm_num_groups=4)
    model.save_pretrained(folder)
    training_scheduler().save_pretrained(folder)
    write_manifest(folder, "tiny", "0", training={"steps": 0})
    return folder


def write_flag_all_detector(folder: Path) -> Path:
    """A released perturbation-detector folder whose estimate is 20/255 for every image, so
    any gate up to 20 purifies everything (the behaviour of the ungated purifier)."""
    model = PerturbationDetector((2, 2, 2, 2))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.head[-1].bias.fill_(20.0)  # softplus(20) = 20 to float precision
    return save_detector(model, folder, "0", training={"kind": "test: flags every image"})


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<tmp>/weights/ddpm-v1``: a tiny released denoiser for fast tests, beside a
    ``detector-v1`` that flags every image (so a tuned gate in the defaults changes nothing)."""
    weights = tmp_path_factory.mktemp("weights")
    write_flag_all_detector(weights / "detector-v1")
    return write_tiny_release(weights / "ddpm-v1")


@pytest.fixture(scope="module")
def tiny_defense(tiny_weights: Path) -> Defense:
    """``Defense`` on the tiny denoiser, seed 0, t*=20 with 2 steps, float32
    (``TINY_DEFENSE_KNOBS``)."""
    return Defense("cpu", weights=tiny_weights, seed=0, config=PurifierConfig(**TINY_DEFENSE_KNOBS))


def write_tiny_standin(folder: Path, bias: float = 0.0) -> Path:
    """A stand-in metric folder on a tiny random trunk (seed 0); score = regression + ``bias``."""
    spec = TrunkSpec((1, 1, 1, 1), groups=2, width_per_group=16, stem_width=8)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        tiny = IQAModel(spec).eval()
    return save_standin(tiny, [1.0] * 3, [bias] * 3, folder)


@pytest.fixture(scope="session")
def tiny_metric(tmp_path_factory: pytest.TempPathFactory) -> MetricModel:
    """A ``MetricModel`` on a tiny random stand-in trunk saved as a stand-in folder."""
    folder = tmp_path_factory.mktemp("metric") / "standin-tiny"
    return MetricModel("cpu", write_tiny_standin(folder))
