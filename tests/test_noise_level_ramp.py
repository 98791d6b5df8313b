"""The per-image noise level: ``t_star`` rising to ``t_star_max`` with the detector's estimate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from defense import Defense
from evaluation.tuning import normalise
from purifier import DiffusionPurifier, PurifierConfig
from purifier import cli as purify_cli
from purifier.config import config_from_options
from tests.test_perturbation_detector import FixedStrengths, images

KNOBS = {"t_star": 20, "steps": 2, "sampler": "ddpm", "ensemble": 1}
RAMP = {**KNOBS, "t_star_max": 60, "strength_ramp": 8.0}


def purifier_with(tiny_weights: Path, config: PurifierConfig, strengths: list[float]):
    base = DiffusionPurifier.from_pretrained(tiny_weights, "cpu", PurifierConfig(**KNOBS))
    detector = FixedStrengths(strengths)
    purifier = DiffusionPurifier(base.model, dict(base.scheduler.config), config, 0, detector)
    return purifier, detector


# --- the mapping ------------------------------------------------------------------------------


def test_noise_level_rises_linearly_from_t_star_and_is_flat_above_the_ramp() -> None:
    config = PurifierConfig(t_star=40, steps=1, t_star_max=120, strength_ramp=8.0)
    levels = [config.noise_level(s) for s in (0.0, 0.01, 1.0, 3.0, 4.0, 8.0, 20.0, -1.0)]
    assert levels == [40, 40, 50, 70, 80, 120, 120, 40]
    # between two levels the nearest is taken (10 levels per 1/255 here)
    assert [config.noise_level(s) for s in (0.04, 0.06, 2.96)] == [40, 41, 70]


def test_without_a_ramp_every_image_gets_t_star() -> None:
    config = PurifierConfig(t_star=40, steps=1)
    assert [config.noise_level(s) for s in (0.0, 5.0, 50.0)] == [40, 40, 40]
    assert not config.uses_detector
    assert PurifierConfig(t_star=40, steps=1, t_star_max=80).uses_detector
    assert PurifierConfig(gate=0.5).uses_detector


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"t_star_max": 40}, "above t_star=40"),
        ({"t_star_max": 10}, "above t_star=40"),
        ({"t_star_max": 1000}, "bad t_star_max=1000"),
        ({"t_star_max": 2.5}, "t_star_max must be an integer"),
        ({"t_star_max": True}, "t_star_max must be an integer"),
        ({"t_star_max": -1}, "t_star_max must be an integer >= 0"),
        ({"strength_ramp": 0.0}, "strength_ramp must be a finite number > 0"),
        ({"strength_ramp": float("nan")}, "strength_ramp"),
        ({"strength_ramp": "8"}, "strength_ramp"),
    ],
)
def test_bad_ramps_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PurifierConfig(t_star=40, steps=2, **changes)


def test_a_bad_t_star_is_named_even_with_a_ramp() -> None:
    with pytest.raises(ValueError, match="t_star must be an integer"):
        PurifierConfig(t_star="40", t_star_max=80)


# --- a user's knobs over the defaults ---------------------------------------------------------

SHIPPED_LIKE = PurifierConfig(t_star=60, steps=1, ensemble=4, t_star_max=80)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"t_star": 100}, {"t_star": 100, "t_star_max": 120}),
        ({"t_star": 40}, {"t_star": 40, "t_star_max": 60}),
        ({"t_star": 990}, {"t_star": 990, "t_star_max": 999}),
        ({"t_star": 999}, {"t_star": 999, "t_star_max": 0}),
        ({"t_star": 100, "t_star_max": 0}, {"t_star": 100, "t_star_max": 0}),
        ({"t_star": 100, "t_star_max": 200}, {"t_star": 100, "t_star_max": 200}),
        # one DDIM step: 49..69 would all run from 49, so the ramp reaches the next level
        ({"sampler": "ddim"}, {"sampler": "ddim", "t_star": 49, "t_star_max": 99}),
        ({"sampler": "ddim", "steps": 2}, {"t_star": 49, "t_star_max": 69}),  # 69 -> 79
        ({"sampler": "ddim", "t_star_max": 69}, {"t_star": 49, "t_star_max": 69}),  # as given
        ({"sampler": "ddim", "steps": 4}, {"t_star": 79, "steps": 4, "t_star_max": 99}),
        ({"sampler": "ddim", "t_star": 99}, {"t_star": 99, "t_star_max": 119}),
        ({"ensemble": 2, "t_star": None}, {"t_star": 60, "t_star_max": 80, "ensemble": 2}),
    ],
)
def test_coupled_knobs_follow_a_users_knob(changes: dict, expected: dict) -> None:
    config = SHIPPED_LIKE.override(**changes)
    assert {k: getattr(config, k) for k in expected} == expected


def test_ddim_over_quadratic_defaults_takes_the_uniform_grid() -> None:
    base = PurifierConfig(t_star=60, steps=3, spacing="quadratic")
    config = base.override(sampler="ddim")
    knobs = (config.sampler, config.spacing, config.t_star, config.t_star_max)
    assert knobs == ("ddim", "uniform", 59, 0)


def test_an_adjustment_is_logged(caplog) -> None:
    with caplog.at_level("INFO", logger="purifier.config"):
        SHIPPED_LIKE.override(t_star=100)
    assert "adjusted t_star_max=120 to go with the given t_star=100" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="purifier.config"):
        assert SHIPPED_LIKE.override(ensemble=2).t_star_max == 80
    assert caplog.text == ""


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"t_star": 100, "t_star_max": 90}, "above t_star=100"),
        ({"t_star": 1000}, "t_star"),
        ({"t_star": 10.5}, "t_star"),
        ({"sampler": "ddim", "t_star": 60}, "nearest valid t_star"),
        ({"sampler": "ddim", "steps": 0}, "steps"),
        ({"t_sta": 3}, "unknown purifier option"),
    ],
)
def test_explicit_bad_knobs_are_still_refused(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SHIPPED_LIKE.override(**changes)


def test_purify_cli_and_defense_move_the_default_ramp(
    tiny_weights: Path, tmp_path: Path, monkeypatch
) -> None:
    defaults = tmp_path / "defaults.json"
    defaults.write_text('{"t_star": 20, "steps": 1, "t_star_max": 40}')
    monkeypatch.setattr("purifier.config.DEFAULTS_FILE", defaults)
    config = config_from_options(purify_cli.parse_args(["in", "out", "--t-star", "50"]))
    assert (config.t_star, config.t_star_max) == (50, 70)
    defense = Defense("cpu", weights=tiny_weights, t_star=50, precision="float32")
    assert (defense.config.t_star, defense.config.t_star_max) == (50, 70)


def test_the_tuner_counts_rampless_candidates_once() -> None:
    base = PurifierConfig(t_star=40, steps=1)
    a = normalise(base, t_star_max=0, strength_ramp=4.0)
    b = normalise(base, t_star_max=0, strength_ramp=8.0)
    assert a == b and a is not None and a.strength_ramp == PurifierConfig.strength_ramp
    assert normalise(base, t_star_max=80, strength_ramp=4.0).strength_ramp == 4.0
    assert normalise(base, t_star_max=30) is None  # not above t_star


# --- the purifier -----------------------------------------------------------------------------


def test_each_image_is_purified_from_its_own_noise_level(tiny_weights: Path) -> None:
    purifier, detector = purifier_with(tiny_weights, PurifierConfig(**RAMP), [8.0, 0.0])
    x = images(2, 16)
    assert purifier.plan(x) == [60, 20]
    out = purifier(x)
    # groups run in increasing noise level from one generator: the t_star image first
    reference = DiffusionPurifier(
        purifier.model, purifier.scheduler_config, PurifierConfig(**KNOBS)
    )
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(out[1:], reference.purify_all(x[1:], generator, t_star=20))
    assert torch.equal(out[:1], reference.purify_all(x[:1], generator, t_star=60))
    assert purifier.chain(60)[1] == [60, 30]  # round((60 + 1) / 2) - 1


def test_a_batch_on_one_level_is_one_call(tiny_weights: Path, monkeypatch) -> None:
    purifier, _ = purifier_with(tiny_weights, PurifierConfig(**RAMP), [4.0, 4.0])
    seen = []
    original = purifier.purify_all

    def spy(x, generator=None, t_star=None):
        seen.append((x.shape[0], t_star))
        return original(x, generator, t_star)

    monkeypatch.setattr(purifier, "purify_all", spy)
    purifier(images(2, 16))
    assert seen == [(2, 40)]


def test_gate_and_ramp_together(tiny_weights: Path) -> None:
    config = PurifierConfig(**RAMP, gate=1.0)
    purifier, _ = purifier_with(tiny_weights, config, [0.5, 2.0, 30.0])
    x = images(3, 16)
    assert purifier.plan(x) == [0, 30, 60]
    out = purifier(x)
    assert torch.equal(out[0], x[0])
    assert not torch.equal(out[1], x[1]) and not torch.equal(out[2], x[2])
    assert torch.equal(purifier.flags(x), torch.tensor([False, True, True]))


def test_ddim_levels_snap_to_the_grid_and_never_fall_below_t_star(tiny_weights: Path) -> None:
    config = PurifierConfig(t_star=39, steps=2, sampler="ddim", t_star_max=99, strength_ramp=6.0)
    purifier, _ = purifier_with(tiny_weights, config, [0.0, 0.5, 1.0, 6.0])
    x = images(4, 16)
    assert purifier.plan(x) == [39, 39, 49, 99]  # the levels the chains start from (44 -> 39)
    assert purifier.chain(39)[1] == [39, 19]
    assert purifier.chain(44)[1] == [39, 19]  # 44 is nearer 39 than 49 (ties: the smaller)
    assert purifier.chain(45)[1] == [49, 24]
    assert purifier.chain(99)[1] == [99, 49]
    assert purifier(x).shape == x.shape


def test_tiled_images_get_one_level_each(tiny_weights: Path, monkeypatch) -> None:
    purifier, detector = purifier_with(tiny_weights, PurifierConfig(**RAMP), [8.0])
    levels = []
    original = purifier.purify_all

    def spy(x, generator=None, t_star=None, noise=None):
        levels.append(t_star)
        return original(x, generator, t_star, noise)

    monkeypatch.setattr(purifier, "purify_all", spy)
    out = purifier.tiled(images(1, 40), tile=24, overlap=4)
    assert out.shape == (1, 3, 40, 40)
    assert detector.calls == 1 and len(levels) == 4 and set(levels) == {60}


def test_the_ramp_needs_a_detector(tiny_weights: Path) -> None:
    base = DiffusionPurifier.from_pretrained(tiny_weights, "cpu", PurifierConfig(**KNOBS))
    with pytest.raises(ValueError, match="detector"):
        DiffusionPurifier(base.model, dict(base.scheduler.config), PurifierConfig(**RAMP))


def test_defense_with_a_ramp_is_differentiable_and_seeded(tiny_weights: Path) -> None:
    # conftest's detector beside the weights estimates 20/255 for every image: t_star_max
    defense = Defense("cpu", weights=tiny_weights, seed=0, config=PurifierConfig(**RAMP))
    x = images(1, 16).requires_grad_(True)
    assert defense.purifier.plan(x) == [60]
    out = defense.apply_defense(x)
    out.sum().backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)
    again = Defense("cpu", weights=tiny_weights, seed=0, config=PurifierConfig(**RAMP))
    with torch.no_grad():
        assert torch.equal(again.apply_defense(x.detach()), out.detach())


def test_purify_cli_takes_the_ramp(tiny_weights: Path, tmp_path: Path) -> None:
    args = purify_cli.parse_args(
        ["in", "out", "--t-star", "20", "--steps", "2", "--t-star-max", "60",
         "--strength-ramp", "4"]
    )  # fmt: skip
    config = config_from_options(args)
    assert (config.t_star, config.t_star_max, config.strength_ramp) == (20, 60, 4.0)


# --- mutation-testing additions ----------------------------------------------------------------


def test_override_keeps_an_explicit_spacing_and_validates_it() -> None:
    base = PurifierConfig(t_star=60, steps=3, spacing="quadratic")
    with pytest.raises(ValueError, match="spacing 'uniform'"):
        base.override(sampler="ddim", spacing="quadratic")


def _zero_noise_purifier(config: PurifierConfig, strengths: list[float]) -> DiffusionPurifier:
    from diffusion import ddpm_scheduler_config
    from tests.test_diffusion import ZeroNoise

    return DiffusionPurifier(
        ZeroNoise(), ddpm_scheduler_config(), config, 0, FixedStrengths(strengths)
    )


def test_each_level_runs_its_own_chain_exactly() -> None:
    """A zero noise predictor makes one DDPM step exact: clamp(x + sigma_t * noise), with the
    groups drawing from one generator in increasing noise level (start noise, then the
    step's own draw, which has zero variance on the last step)."""
    from diffusion import timestep_to_sigma

    config = PurifierConfig(t_star=20, steps=1, t_star_max=60, strength_ramp=8.0)
    purifier = _zero_noise_purifier(config, [8.0, 0.0])
    x = images(2, 8)
    assert purifier.plan(x) == [60, 20]
    out = purifier(x)
    draw = torch.Generator().manual_seed(0)
    low = torch.randn((1, 3, 8, 8), generator=draw)
    torch.randn((1, 3, 8, 8), generator=draw)  # the step's (zero-variance) noise
    high = torch.randn((1, 3, 8, 8), generator=draw)
    expected_low = (x[1:] + timestep_to_sigma(20) * low).clamp(0, 1)
    expected_high = (x[:1] + timestep_to_sigma(60) * high).clamp(0, 1)
    torch.testing.assert_close(out[1:], expected_low, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:1], expected_high, atol=1e-5, rtol=0)
    # purify_all honours its t_star argument
    again = purifier.purify_all(x[:1], torch.Generator().manual_seed(1), t_star=60)
    noise = torch.randn((1, 3, 8, 8), generator=torch.Generator().manual_seed(1))
    expected = (x[:1] + timestep_to_sigma(60) * noise).clamp(0, 1)
    torch.testing.assert_close(again, expected, atol=1e-5, rtol=0)


def test_ddim_gate_leaves_images_below_it_unchanged() -> None:
    from diffusion import timestep_to_sigma

    config = PurifierConfig(t_star=39, steps=2, sampler="ddim", gate=1.0)
    purifier = _zero_noise_purifier(config, [0.5, 2.0])
    x = images(2, 8)
    assert purifier.plan(x) == [0, 39]
    out = purifier(x)
    assert torch.equal(out[0], x[0])
    noise = torch.randn((1, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    expected = (x[1:] + timestep_to_sigma(39) * noise).clamp(0, 1)
    torch.testing.assert_close(out[1:], expected, atol=1e-5, rtol=0)


def test_an_explicit_ramp_top_is_kept_even_where_the_default_would_collapse() -> None:
    # the default 60..65 would collapse on the one-step DDIM grid (65 -> 49), the given 200 not
    base = PurifierConfig(t_star=60, steps=1, t_star_max=65)
    config = base.override(sampler="ddim", t_star_max=200)
    assert (config.t_star, config.t_star_max) == (49, 200)
    assert base.override(sampler="ddim").t_star_max == 99  # not given: widened


@pytest.mark.parametrize("t_star", [10.5, "40"])
def test_a_bad_t_star_over_a_ramp_is_named_as_t_star(t_star: object) -> None:
    with pytest.raises(ValueError, match="t_star must be an integer in"):
        SHIPPED_LIKE.override(t_star=t_star)
