"""Kept-timestep lists, DDIM grid rules and the scheduler factory; short pinned purifications."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from diffusion import PixelUnshuffleUNet, purify
from schedulers import (
    ddim_grid_stride,
    ddim_kept_timesteps,
    kept_timesteps,
    make_scheduler,
    nearest_ddim_t_star,
)


def tiny_unet(seed: int = 0) -> PixelUnshuffleUNet:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return PixelUnshuffleUNet(unshuffle=2, block_out_channels=(8, 16), norm_num_groups=4).eval()


@pytest.mark.parametrize(
    ("t_star", "steps", "spacing", "expected"),
    [
        (99, 10, "uniform", [99, 89, 79, 69, 59, 49, 39, 29, 19, 9]),
        (99, 10, "quadratic", [99, 80, 63, 48, 35, 24, 15, 8, 3, 0]),
        (100, 4, "uniform", [100, 75, 50, 24]),
        (100, 4, "quadratic", [100, 56, 24, 5]),
        (5, 1, "uniform", [5]),
        (5, 1, "quadratic", [5]),
        (5, 6, "uniform", [5, 4, 3, 2, 1, 0]),
        (10, 10, "quadratic", [10, 8, 7, 6, 5, 4, 3, 2, 1, 0]),
        (1, 2, "uniform", [1, 0]),
        (999, 5, "uniform", [999, 799, 599, 399, 199]),
    ],
)
def test_kept_timesteps_pinned(t_star: int, steps: int, spacing: str, expected: list[int]) -> None:
    assert kept_timesteps(t_star, steps, spacing) == expected


@pytest.mark.parametrize("spacing", ["uniform", "quadratic"])
@pytest.mark.parametrize("t_star", [1, 2, 7, 30, 150, 999])
def test_kept_timesteps_properties(spacing: str, t_star: int) -> None:
    for steps in sorted({1, 2, t_star // 2 or 1, t_star, t_star + 1}):
        kept = kept_timesteps(t_star, steps, spacing)
        assert len(kept) == steps
        assert kept[0] == t_star
        assert kept[-1] >= 0
        assert all(a > b for a, b in pairwise(kept))
        assert all(isinstance(t, int) for t in kept)
    assert kept_timesteps(t_star, t_star + 1, spacing) == list(range(t_star, -1, -1))


@pytest.mark.parametrize(
    ("t_star", "steps", "spacing", "message"),
    [
        (0, 1, "uniform", "t_star"),
        (1000, 1, "uniform", "t_star"),
        (-3, 1, "uniform", "t_star"),
        (50.0, 5, "uniform", "t_star"),
        (True, 1, "uniform", "t_star"),
        (50, 0, "uniform", "steps"),
        (50, 52, "uniform", "steps"),
        (50, 2.0, "uniform", "steps"),
        (50, 5, "cosine", "spacing"),
    ],
)
def test_kept_timesteps_rejects_bad_input(t_star, steps, spacing, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kept_timesteps(t_star, steps, spacing)


def test_kept_timesteps_accepts_numpy_ints() -> None:
    assert kept_timesteps(np.int64(9), np.int32(2)) == [9, 4]


@pytest.mark.parametrize(
    ("t_star", "steps", "expected"),
    [
        (99, 10, [99, 89, 79, 69, 59, 49, 39, 29, 19, 9]),
        (99, 1, [99]),
        (49, 5, [49, 39, 29, 19, 9]),
        (199, 8, [199, 174, 149, 124, 99, 74, 49, 24]),
        (3, 4, [3, 2, 1, 0]),
    ],
)
def test_ddim_kept_timesteps_pinned(t_star: int, steps: int, expected: list[int]) -> None:
    assert ddim_kept_timesteps(t_star, steps) == expected
    assert kept_timesteps(t_star, steps, "uniform") == expected


def test_ddim_grid_rules() -> None:
    assert ddim_grid_stride(99, 10) == 10
    assert ddim_grid_stride(999, 1) == 1000
    with pytest.raises(ValueError, match="nearest valid t_star: 99"):
        ddim_grid_stride(100, 10)
    with pytest.raises(ValueError, match="nearest valid t_star"):
        ddim_grid_stride(29, 10)  # stride 3 does not divide 1000
    assert nearest_ddim_t_star(100, 10) == 99
    assert nearest_ddim_t_star(29, 10) == 19
    assert nearest_ddim_t_star(35, 10) == 39
    with pytest.raises(ValueError, match="steps"):
        nearest_ddim_t_star(100, 0)


def test_make_scheduler_ddpm_is_fresh_and_configured() -> None:
    first, kept = make_scheduler("ddpm", 60, 4, "quadratic")
    second, kept_again = make_scheduler("ddpm", 60, 4, "quadratic")
    assert isinstance(first, DDPMScheduler)
    assert first is not second
    assert kept == kept_again == [60, 33, 14, 3]
    assert first.timesteps.tolist() == kept
    assert first.config.beta_end == 0.02 and first.config.prediction_type == "epsilon"


def test_make_scheduler_ddim_grid_tail() -> None:
    scheduler, kept = make_scheduler("ddim", 99, 10)
    assert isinstance(scheduler, DDIMScheduler)
    assert kept == [99, 89, 79, 69, 59, 49, 39, 29, 19, 9]
    assert scheduler.timesteps.tolist()[-10:] == kept
    assert scheduler.timesteps.tolist()[0] == 999
    assert scheduler.config.timestep_spacing == "trailing"
    snapped, kept_snapped = make_scheduler("ddim", 101, 10, snap_to_grid=True)
    assert kept_snapped == kept


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("ddim", 100, 10), {}, "nearest valid t_star: 99"),
        (("ddim", 99, 10, "quadratic"), {}, "uniform"),
        (("euler", 99, 10), {}, "sampler"),
        (("ddpm", 99, 101), {}, "steps"),
    ],
)
def test_make_scheduler_rejects_bad_input(args, kwargs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_scheduler(*args, **kwargs)


@pytest.mark.parametrize(
    ("sampler", "t_star", "steps", "spacing", "expected_mean", "expected_std"),
    [
        ("ddpm", 19, 4, "uniform", 0.5065663, 0.2882428),
        ("ddpm", 60, 3, "quadratic", 0.5119190, 0.2962256),
        ("ddim", 19, 4, "uniform", 0.5050639, 0.2883295),
    ],
)
def test_short_purification_pinned(
    sampler: str, t_star: int, steps: int, spacing: str, expected_mean: float, expected_std: float
) -> None:
    model = tiny_unet()
    images = torch.rand(2, 3, 16, 20, generator=torch.Generator().manual_seed(1))
    scheduler, kept = make_scheduler(sampler, t_star, steps, spacing)
    with torch.no_grad():
        out = purify(images, model, scheduler, kept, generator=7)
    assert out.shape == images.shape
    assert abs(out.mean().item() - expected_mean) < 1e-4
    assert abs(out.std().item() - expected_std) < 1e-4


def test_ddim_start_levels_need_a_grid() -> None:
    from schedulers.timestep_spacing import ddim_t_stars

    assert ddim_t_stars(1, num_train_timesteps=4) == [1, 3]
    with pytest.raises(ValueError, match="no DDIM grid has 1 steps below a t_star < 1"):
        ddim_t_stars(1, num_train_timesteps=1)
