"""The denoiser's precision knob: float32, bfloat16 autocast, or auto (bfloat16 where native)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import diffusion.precision
from defense import Defense
from diffusion import load_denoiser, purify
from diffusion.precision import PRECISIONS, compute_dtype, has_native_bfloat16
from purifier import PurifierConfig
from purifier import cli as purify_cli
from purifier.config import config_from_options
from schedulers import make_scheduler

CPU = torch.device("cpu")


def images(batch: int = 2, size: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("precision", "native", "expected"),
    [
        ("float32", True, None),
        ("float32", False, None),
        ("bfloat16", True, torch.bfloat16),
        ("bfloat16", False, torch.bfloat16),  # asked for explicitly: emulated, but honoured
        ("auto", True, torch.bfloat16),
        ("auto", False, None),
    ],
)
def test_compute_dtype(
    monkeypatch: pytest.MonkeyPatch, precision: str, native: bool, expected: torch.dtype | None
) -> None:
    monkeypatch.setattr(diffusion.precision, "has_native_bfloat16", lambda device: native)
    assert compute_dtype(precision, CPU) is expected


@pytest.mark.parametrize("precision", ["fp16", "float16", "", "AUTO", None])
def test_unknown_precision_is_refused(precision: object) -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        compute_dtype(precision, CPU)  # type: ignore[arg-type]
    if precision is not None:  # None means "keep the default" in PurifierConfig.replace
        with pytest.raises(ValueError, match="precision must be one of"):
            PurifierConfig(precision=precision)  # type: ignore[arg-type]


def test_only_cpus_and_gpus_can_have_native_bfloat16() -> None:
    assert has_native_bfloat16(torch.device("meta")) is False
    assert isinstance(has_native_bfloat16(CPU), bool)


def test_bfloat16_purification_is_close_to_float32_and_differentiable(tiny_weights: Path) -> None:
    model, scheduler_config = load_denoiser(tiny_weights)
    scheduler, timesteps = make_scheduler("ddpm", 20, 2, "uniform", scheduler_config)
    x = images()
    runs = {}
    for dtype in (None, torch.bfloat16):
        runs[dtype] = purify(x, model, scheduler, timesteps, 3, autocast_dtype=dtype)
    assert runs[torch.bfloat16].dtype == torch.float32
    assert not torch.equal(runs[None], runs[torch.bfloat16])  # the autocast really ran
    assert (runs[None] - runs[torch.bfloat16]).abs().max() < 4 / 255

    xr = x.clone().requires_grad_()
    purify(xr, model, scheduler, timesteps, 3, autocast_dtype=torch.bfloat16).sum().backward()
    assert xr.grad is not None and xr.grad.abs().sum() > 0 and torch.isfinite(xr.grad).all()


def test_defense_precision_knob(tiny_weights: Path) -> None:
    knobs = {"t_star": 20, "steps": 2, "weights": tiny_weights, "seed": 0}
    exact, fast = (Defense("cpu", precision=p, **knobs) for p in ("float32", "bfloat16"))
    assert exact.config.precision == "float32" and exact.purifier.autocast_dtype is None
    assert fast.purifier.autocast_dtype is torch.bfloat16 and "precision='bfloat16'" in repr(fast)
    x = images(size=20).double()
    with torch.no_grad():
        a, b = exact.apply_defense(x), fast.apply_defense(x)
    assert a.dtype == b.dtype == torch.float64 and a.shape == b.shape == x.shape
    assert 0 < (a - b).abs().max() < 4 / 255
    with pytest.raises(ValueError, match="precision must be one of"):
        Defense("cpu", precision="half", weights=tiny_weights)


def test_purify_cli_precision_option(tmp_path: Path) -> None:
    args = purify_cli.parse_args(
        [str(tmp_path / "in"), str(tmp_path / "out"), "--precision", "float32"]
    )
    assert config_from_options(args).precision == "float32"
    assert set(PRECISIONS) == {"auto", "float32", "bfloat16"}
    with pytest.raises(SystemExit):
        purify_cli.parse_args([str(tmp_path / "in"), str(tmp_path / "out"), "--precision", "fp16"])
