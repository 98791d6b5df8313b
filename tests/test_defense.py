"""defense.Defense and the purifier package behind it: API contract, randomness, gradients,
knob validation, defaults, weights discovery, ensemble and unsharp masking."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import defense
import purifier.config
from defense import Defense
from purifier import (
    PROVISIONAL_DEFAULTS,
    DiffusionPurifier,
    MissingWeightsError,
    PurifierConfig,
    load_default_config,
    newest_release,
    resolve_weights,
)
from purifier.unsharp import gaussian_blur, gaussian_kernel1d, unsharp_mask

KNOBS = {"t_star": 20, "steps": 2}


@pytest.fixture(scope="module")
def weights(tiny_weights: Path) -> Path:
    return tiny_weights


pytestmark = pytest.mark.usefixtures("provisional_defaults")


def images(batch: int = 2, height: int = 16, width: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


# --- the competition contract ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch", "height", "width", "dtype"),
    [(1, 16, 16, torch.float32), (3, 17, 23, torch.float32), (2, 8, 40, torch.float64)],
)
def test_shape_dtype_device_range(
    weights: Path, batch: int, height: int, width: int, dtype: torch.dtype
) -> None:
    x = images(batch, height, width).to(dtype)
    with torch.no_grad():
        out = Defense("cpu", weights=weights, **KNOBS).apply_defense(x)
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)


def test_competition_call_with_device_only(weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(defense, "WEIGHTS_DIR", weights.parent)
    d = Defense("cpu")
    assert d.weights == weights
    assert d.config == PROVISIONAL_DEFAULTS
    with torch.no_grad():
        assert d.apply_defense(images()).shape == (2, 3, 16, 20)


def test_fixed_seed_reproduces_the_sequence_of_calls(weights: Path) -> None:
    x = images()
    first, second = (Defense(weights=weights, seed=7, **KNOBS) for _ in range(2))
    with torch.no_grad():
        a1, a2 = first.apply_defense(x), first.apply_defense(x)
        b1, b2 = second.apply_defense(x), second.apply_defense(x)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2)


def test_without_seed_every_call_draws_fresh_noise(weights: Path) -> None:
    x = images()
    d, other = Defense(weights=weights, **KNOBS), Defense(weights=weights, **KNOBS)
    with torch.no_grad():
        first, second, third = d.apply_defense(x), d.apply_defense(x), other.apply_defense(x)
    assert not torch.equal(first, second)
    assert not torch.equal(first, third)


def test_gradient_reaches_the_input(weights: Path) -> None:
    x = images(1).requires_grad_(True)
    Defense(weights=weights, seed=0, **KNOBS).apply_defense(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


def test_gradients_reach_the_input_never_the_weights(weights: Path) -> None:
    d = Defense(weights=weights, seed=0, **KNOBS)
    assert not any(p.requires_grad for p in d.purifier.model.parameters())
    assert not d.apply_defense(images(1)).requires_grad  # nothing to differentiate
    x = images(1).requires_grad_(True)
    d.apply_defense(x).sum().backward()
    assert x.grad is not None
    assert all(p.grad is None for p in d.purifier.model.parameters())


def test_a_device_this_machine_lacks_is_a_value_error(weights: Path) -> None:
    with pytest.raises(ValueError, match="invalid device 'cudaa'"):
        Defense("cudaa", weights=weights)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            Defense("cuda", weights=weights)


def test_no_grad_gives_a_detached_output(weights: Path) -> None:
    x = images(1).requires_grad_(True)
    with torch.no_grad():
        out = Defense(weights=weights, seed=0, **KNOBS).apply_defense(x)
    assert not out.requires_grad


def test_each_defense_owns_its_scheduler(weights: Path) -> None:
    a, b = Defense(weights=weights, **KNOBS), Defense(weights=weights, **KNOBS)
    assert a.purifier.scheduler is not b.purifier.scheduler
    assert a.purifier.timesteps == [20, 10]
    assert "t_star=20" in repr(a) and "timesteps=[20, 10]" in repr(a)


@pytest.mark.parametrize(
    "bad",
    [
        "not a tensor",
        torch.rand(3, 16, 16),
        torch.rand(1, 1, 16, 16),
        torch.randint(0, 2, (1, 3, 8, 8)),
        torch.full((1, 3, 8, 8), float("nan")),
        torch.full((1, 3, 8, 8), 1.5),
        torch.full((1, 3, 8, 8), -0.1),
        torch.rand(0, 3, 8, 8),
    ],
)
def test_bad_input_raises(weights: Path, bad: object) -> None:
    with pytest.raises(ValueError):
        Defense(weights=weights, **KNOBS).apply_defense(bad)  # type: ignore[arg-type]


# --- knobs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"t_star": 0}, "t_star"),
        ({"t_star": 1000}, "t_star"),
        ({"t_star": 10.5}, "t_star"),
        ({"steps": 0}, "steps"),
        ({"t_star": 5, "steps": 7}, "steps"),
        ({"sampler": "euler"}, "sampler"),
        ({"spacing": "cubic"}, "spacing"),
        ({"sampler": "ddim", "spacing": "quadratic"}, "uniform"),
        ({"sampler": "ddim", "t_star": 20, "steps": 3}, "nearest valid t_star"),
        ({"ensemble": 0}, "ensemble"),
        ({"ensemble": 1.5}, "ensemble"),
        ({"unsharp_amount": -0.1}, "unsharp_amount"),
        ({"unsharp_amount": float("inf")}, "unsharp_amount"),
        ({"unsharp_radius": 0.0}, "unsharp_radius"),
        ({"seed": "1"}, "seed"),
        ({"seed": True}, "seed"),
    ],
)
def test_bad_knobs_raise(weights: Path, knobs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Defense(weights=weights, **knobs)


def test_config_replace_rejects_unknown_options() -> None:
    with pytest.raises(ValueError, match="unknown purifier option"):
        PROVISIONAL_DEFAULTS.replace(t_sta=3)
    assert PROVISIONAL_DEFAULTS.replace(t_star=None) == PROVISIONAL_DEFAULTS


def test_ddim_chain(weights: Path) -> None:
    d = Defense(weights=weights, sampler="ddim", t_star=19, steps=2, seed=0)
    assert d.purifier.timesteps == [19, 9]
    with torch.no_grad():
        out = d.apply_defense(images())
    assert out.shape == (2, 3, 16, 20)


def test_defaults_file_overrides_provisional_values(tmp_path: Path) -> None:
    path = tmp_path / "defaults.json"
    path.write_text(json.dumps({"t_star": 80, "unsharp_amount": 0.5}))
    config = load_default_config(path)
    assert (config.t_star, config.unsharp_amount, config.steps) == (80, 0.5, 2)
    assert load_default_config(tmp_path / "missing.json") == PROVISIONAL_DEFAULTS


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "cannot read"),
        ("[1, 2]", "JSON object"),
        ('{"t_star": -1}', "t_star"),
        ('{"bogus": 1}', "unknown purifier option"),
    ],
)
def test_bad_defaults_file_raises(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "defaults.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_default_config(path)


def test_defense_reads_the_defaults_file(
    weights: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "defaults.json"
    path.write_text(json.dumps({"t_star": 30, "steps": 3}))
    monkeypatch.setattr(purifier.config, "DEFAULTS_FILE", path)
    d = Defense(weights=weights, steps=1)
    assert (d.config.t_star, d.config.steps) == (30, 1)


# --- weights ---------------------------------------------------------------------------------


def test_missing_weights_folder_names_folder_and_training_command(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError, match=r"nope.*train_ddpm\.py"):
        Defense(weights=tmp_path / "nope")


def test_no_released_weights_names_folder_and_training_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    empty = tmp_path / "weights"
    (empty / "ddpm-v3").mkdir(parents=True)  # no manifest: not released
    monkeypatch.setattr(defense, "WEIGHTS_DIR", empty)
    with pytest.raises(MissingWeightsError) as info:
        Defense("cpu")
    assert str(empty) in str(info.value) and "scripts/train_ddpm.py --output" in str(info.value)


def test_newest_release_is_chosen_by_version_number(tmp_path: Path) -> None:
    for name, released in [
        ("ddpm-v1", True),
        ("ddpm-v2", True),
        ("ddpm-v10", True),
        ("ddpm-v11", False),
        ("ddpm-v99-old", True),
        ("other-v50", True),
    ]:
        (tmp_path / name).mkdir()
        if released:
            (tmp_path / name / "manifest.json").write_text("{}")
    assert newest_release(tmp_path) == tmp_path / "ddpm-v10"
    assert resolve_weights(tmp_path / "ddpm-v1", tmp_path) == tmp_path / "ddpm-v1"
    assert resolve_weights(None, tmp_path) == tmp_path / "ddpm-v10"


# --- ensemble and unsharp masking ------------------------------------------------------------


def _purifier(weights: Path, seed: int, **knobs: object) -> DiffusionPurifier:
    config = PurifierConfig(**{**KNOBS, **knobs})
    return DiffusionPurifier.from_pretrained(weights, "cpu", config, seed)


def test_ensemble_averages_consecutive_runs(weights: Path) -> None:
    x = images()
    single = _purifier(weights, seed=3)
    with torch.no_grad():
        expected = (single(x) + single(x)) / 2
        out = _purifier(weights, seed=3, ensemble=2)(x)
    assert torch.equal(out, expected)


def test_unsharp_is_applied_after_denoising(weights: Path) -> None:
    x = images()
    with torch.no_grad():
        plain = _purifier(weights, seed=4)(x)
        sharpened = _purifier(weights, seed=4, unsharp_amount=0.7, unsharp_radius=1.5)(x)
    torch.testing.assert_close(sharpened, unsharp_mask(plain, 0.7, 1.5), atol=0, rtol=0)
    assert not torch.equal(sharpened, plain)


def test_call_accepts_its_own_generator(weights: Path) -> None:
    p = _purifier(weights, seed=0)
    x = images()
    with torch.no_grad():
        a = p(x, generator=torch.Generator().manual_seed(5))
        b = p(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_gaussian_kernel_and_blur_pinned() -> None:
    kernel = gaussian_kernel1d(1.0, torch.float64, torch.device("cpu"))
    assert kernel.numel() == 7
    assert abs(kernel.sum().item() - 1.0) < 1e-12
    assert abs(kernel[3].item() - 0.3990503) < 1e-6
    delta = torch.zeros(1, 1, 15, 15, dtype=torch.float64)
    delta[..., 7, 7] = 1.0
    assert abs(gaussian_blur(delta, 1.0)[0, 0, 7, 7].item() - 0.3990503**2) < 1e-6
    flat = torch.full((2, 3, 5, 6), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 2.0), flat)


def test_unsharp_mask_contract() -> None:
    x = images()
    assert unsharp_mask(x, 0.0, 1.0) is x
    out = unsharp_mask(x, 1.0, 1.0)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    flat = torch.full((1, 3, 8, 8), 0.4)
    torch.testing.assert_close(unsharp_mask(flat, 2.0, 1.0), flat)
    step = torch.zeros(1, 3, 8, 8)
    step[..., 4:] = 0.5
    sharpened = unsharp_mask(step, 1.0, 1.0)
    assert sharpened[0, :, 0, 4].min() > 0.5  # overshoot on the bright side of the edge
    assert sharpened[0, :, 0, 3].max() == 0.0  # undershoot on the dark side, clamped
    with pytest.raises(ValueError, match="amount"):
        unsharp_mask(x, -1.0, 1.0)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(x, 0.0)
    with pytest.raises(ValueError, match=r"expected \(B, C, H, W\)"):
        unsharp_mask(x[0], 1.0, 1.0)


def test_unsharp_mask_pinned_on_an_impulse() -> None:
    """``x + a (x - blur(x, r))`` at the centre of a 0.2 impulse on 0.4: the radius sets how
    much of the impulse the blur keeps (0.39905^2 at r = 1, 0.19968^2 at r = 2)."""
    x = torch.full((1, 1, 15, 15), 0.4, dtype=torch.float64)
    x[..., 7, 7] = 0.6
    for radius, centre in ((1.0, 0.3990503), (2.0, 0.1996756)):
        blurred_peak = 0.4 + 0.2 * centre**2
        expected = 0.6 + 0.5 * (0.6 - blurred_peak)
        out = unsharp_mask(x, 0.5, radius)
        assert abs(out[0, 0, 7, 7].item() - expected) < 1e-6, radius


def test_large_images_are_purified_in_tiles(weights: Path) -> None:
    x = images(batch=1, height=90, width=150, seed=3)
    tiled = Defense(weights=weights, seed=5, tile=80).apply_defense(x)
    assert torch.equal(tiled, Defense(weights=weights, seed=5, tile=80).apply_defense(x))
    assert tiled.shape == x.shape and tiled.min() >= 0 and tiled.max() <= 1
    reference = Defense(weights=weights, seed=5, tile=None)
    per_tile_draws = purifier.tiled_apply(x, reference.purifier, 80, defense.TILE_OVERLAP)
    assert not torch.equal(tiled, per_tile_draws)  # tiles crop one whole-image draw instead
    whole = Defense(weights=weights, seed=5).apply_defense(x)  # below DEFAULT_TILE: one piece
    assert torch.equal(whole, Defense(weights=weights, seed=5, tile=None).apply_defense(x))
    assert not torch.equal(whole, tiled)


@pytest.mark.parametrize("tile", [0, 64, 100.0, True])
def test_bad_tile_sizes_are_rejected(weights: Path, tile: object) -> None:
    with pytest.raises(ValueError, match="tile"):
        Defense(weights=weights, tile=tile)


def test_tiled_defense_still_validates_input(weights: Path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        Defense(weights=weights, tile=80).apply_defense(
            torch.zeros(1, 3, 100, 100, dtype=torch.uint8)
        )


# --- mutation-testing additions ----------------------------------------------------------------


def test_defense_uses_the_detector_folder_it_is_given(weights: Path, tmp_path: Path) -> None:
    from purifier import PerturbationDetector
    from purifier.perturbation_detector import save_detector

    model = PerturbationDetector((2, 2, 2, 2))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.head[-1].bias.fill_(4.0)  # softplus(4) = 4.018: halfway up an 8/255 ramp
    folder = save_detector(model, tmp_path / "detector-v7", "7", training={"kind": "test"})
    knobs = {**KNOBS, "t_star_max": 60, "strength_ramp": 8.0, "precision": "float32"}
    given = Defense("cpu", weights=weights, detector=folder, **knobs)
    assert given.purifier.plan(images(1)) == [40]
    beside = Defense("cpu", weights=weights, **knobs)  # conftest's detector: 20/255
    assert beside.purifier.plan(images(1)) == [60]


def test_defense_takes_the_strength_ramp_knob(weights: Path) -> None:
    knobs = {**KNOBS, "t_star_max": 60, "precision": "float32"}
    defense = Defense("cpu", weights=weights, strength_ramp=40.0, **knobs)
    assert defense.config.strength_ramp == 40.0
    assert defense.purifier.plan(images(1)) == [40]  # 20 + 40 * (20 / 40)


def test_tiled_defense_overlaps_its_tiles_by_tile_overlap(weights: Path) -> None:
    x = images(batch=1, height=40, width=120, seed=3)
    with torch.no_grad():
        out = Defense(weights=weights, seed=5, tile=80, precision="float32").apply_defense(x)
        reference = Defense(weights=weights, seed=5, tile=None, precision="float32").purifier
        expected = reference.tiled(x, 80, defense.TILE_OVERLAP)
        no_overlap = Defense(weights=weights, seed=5, tile=None, precision="float32").purifier
        assert not torch.equal(expected, no_overlap.tiled(x, 80, 0))  # the overlap matters
    assert torch.equal(out, expected)


def test_a_config_that_is_not_a_purifier_config_is_a_value_error(weights: Path) -> None:
    with pytest.raises(ValueError, match="PurifierConfig"):
        Defense(weights=weights, config={"t_star": 20, "steps": 2})
