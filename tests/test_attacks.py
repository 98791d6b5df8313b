"""Attack suite: every registered attack raises a toy metric, respects its bound, is
deterministic, validates input, supports EOT and a defense in the loop, restores modes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from skimage.metrics import structural_similarity
from torch import nn

import attacks.uap as uap_module
from attacks import ATTACKS, make_attack
from attacks.base import Attack
from attacks.color_filter import apply_color_curves, curve_deviation
from attacks.eot import GaussianNoise, RandomShift
from attacks.haar import haar_dwt, haar_idwt, low_frequency
from attacks.korhonen import spatial_activity_map
from attacks.ssah import metric_features
from attacks.ssim import ssim
from attacks.uap import (
    UAP,
    fit_perturbation,
    load_perturbation,
    save_perturbation,
)
from attacks.uap_training import train_uap
from common.image_checks import check_images
from common.image_io import save_image
from common.weights_manifest import WeightsIntegrityError, write_manifest
from metrics.linearity import IQAModel, TrunkSpec

SIZE = 24


class ToyMetric(nn.Module):
    """A tiny conv net scoring ``(B, 3, H, W)`` in [0, 1] -> ``(B, 1)``; records its mode."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.head = nn.Conv2d(6, 1, 1)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        self.modes_seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        self.modes_seen.append(self.training)
        h = torch.tanh(self.bn(self.conv(x)))
        return 50 + 20 * self.head(h).mean(dim=(2, 3))


class LinearMetric(nn.Module):
    """``score = sum(w * x)``: its gradient is ``w`` everywhere."""

    def __init__(self, shape: tuple[int, ...], seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("w", torch.randn(shape, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        return (x * self.w).flatten(1).sum(dim=1, keepdim=True)


def blur(x: torch.Tensor) -> torch.Tensor:
    """A deterministic differentiable 'defense': 3x3 box blur (same size)."""
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


@pytest.fixture()
def images() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    ramp = torch.linspace(0.2, 0.8, SIZE)
    base = (ramp[None, :] * ramp[:, None]).expand(2, 3, SIZE, SIZE)
    return (base + 0.15 * torch.rand(2, 3, SIZE, SIZE, generator=gen)).clamp(0, 1).contiguous()


@pytest.fixture()
def metric() -> ToyMetric:
    return ToyMetric().eval()


@pytest.fixture()
def uap_perturbation(tmp_path, metric) -> torch.Tensor:
    gen = torch.Generator().manual_seed(2)
    paths = []
    for i in range(3):
        path = tmp_path / f"train{i}.png"
        save_image(torch.rand(3, 20, 20, generator=gen), path)
        paths.append(path)
    result = train_uap(
        metric, paths, size=8, epochs=4, batch_size=2, lr=0.01, generator=gen, progress=False
    )
    return result.perturbation


def build(name: str, metric: nn.Module, uap: torch.Tensor | None = None, **kwargs) -> Attack:
    if name == "uap":
        kwargs["perturbation"] = uap
    return make_attack(name, metric, **kwargs)


def scores(metric: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return metric(x).squeeze(1)


NAMES = list(ATTACKS)
GRADIENT_NAMES = [n for n in NAMES if n != "uap"]


def test_registry_lists_every_attack():
    assert NAMES == [
        "fgsm",
        "ifgsm",
        "mifgsm",
        "amifgsm",
        "madc",
        "korhonen",
        "zhang-ssim",
        "adv-cf",
        "ssah",
        "uap",
    ]
    for cls in ATTACKS.values():
        assert cls.__doc__ and cls.__module__.startswith("attacks.")


@pytest.mark.parametrize("name", NAMES)
def test_attack_raises_score_and_keeps_shape_range(name, metric, images, uap_perturbation):
    attack = build(name, metric, uap_perturbation)
    adv = attack(images, torch.Generator().manual_seed(0))
    assert adv.shape == images.shape and adv.dtype == images.dtype
    assert adv.device == images.device and not adv.requires_grad
    assert adv.min() >= 0 and adv.max() <= 1
    before, after = scores(metric, images), scores(metric, adv)
    assert (after > before + 1e-3).all(), (name, before, after)
    delta = adv - images
    if attack.bound == "linf":
        assert delta.abs().max() <= attack.eps + 1e-6
    elif attack.bound == "rmse":
        rmse = delta.square().mean(dim=(1, 2, 3)).sqrt()
        assert (rmse <= attack.eps + 1e-6).all()
    else:
        assert attack.bound is None


@pytest.mark.parametrize("name", NAMES)
def test_attack_is_deterministic_for_a_fixed_generator(name, metric, images, uap_perturbation):
    attack = build(name, metric, uap_perturbation, eot_transform=GaussianNoise(0.02), eot_samples=2)
    first = attack(images, torch.Generator().manual_seed(5))
    second = attack(images, torch.Generator().manual_seed(5))
    assert torch.equal(first, second)


def test_eot_draws_come_from_the_generator(metric, images):
    attack = make_attack("ifgsm", metric, eot_transform=GaussianNoise(0.05), eot_samples=2)
    a = attack(images, torch.Generator().manual_seed(1))
    b = attack(images, torch.Generator().manual_seed(2))
    assert not torch.equal(a, b)


@pytest.mark.parametrize(
    "bad",
    [
        [[0.5]],
        torch.rand(3, SIZE, SIZE),
        torch.rand(1, 1, SIZE, SIZE),
        torch.full((1, 3, SIZE, SIZE), 2.0),
        torch.full((1, 3, SIZE, SIZE), float("nan")),
        torch.zeros(1, 3, SIZE, SIZE, dtype=torch.uint8),
        torch.zeros(0, 3, SIZE, SIZE),
    ],
)
@pytest.mark.parametrize("name", NAMES)
def test_bad_images_raise_value_error(name, bad, metric, uap_perturbation):
    with pytest.raises(ValueError):
        build(name, metric, uap_perturbation)(bad)


def test_bad_generator_and_inference_mode_raise(metric, images):
    attack = make_attack("fgsm", metric)
    with pytest.raises(ValueError, match="generator"):
        attack(images, generator=0)
    with torch.inference_mode(), pytest.raises(ValueError, match="inference_mode"):
        attack(images)


@pytest.mark.parametrize(
    "name, options, reason",
    [
        ("nope", {}, "unknown attack 'nope'"),
        ("ifgsm", {"eps": -0.1}, r"eps must be finite and >= 0"),
        ("ifgsm", {"eps": float("nan")}, r"eps must be finite and >= 0"),
        ("ifgsm", {"steps": 0}, r"steps must be an integer >= 1"),
        ("ifgsm", {"steps": 2.5}, r"steps must be an integer >= 1"),
        ("ifgsm", {"alpha": 0.0}, r"alpha must be finite and > 0"),
        ("ifgsm", {"eot_samples": 0}, r"eot_samples must be an integer >= 1"),
        ("ifgsm", {"eot_transform": 3}, "eot_transform must be callable"),
        ("ifgsm", {"defense": "blur"}, "defense must be callable"),
        ("ifgsm", {"not_an_option": 1}, "bad options for attack 'ifgsm'.*not_an_option"),
        ("fgsm", {"steps": 3}, "FGSM is a single step"),
        ("mifgsm", {"momentum": -1.0}, r"momentum must be finite and >= 0"),
        ("amifgsm", {"alpha": 0.1}, r"AMIFGSM derives its step from the budget"),
        ("amifgsm", {"budget_fn": 1.0}, "budget_fn must be callable"),
        ("madc", {"steps": 0}, r"steps must be an integer >= 1"),
        ("zhang-ssim", {"ssim_weight": -1.0}, r"ssim_weight must be finite and >= 0"),
        ("korhonen", {"eps": 8 / 255}, r"korhonen has no eps bound"),
        ("adv-cf", {"pieces": 0}, r"pieces must be an integer >= 1"),
        ("ssah", {"lf_weight": -1.0}, r"lf_weight must be finite and >= 0"),
        (
            "uap",
            {"mode": "stretch", "perturbation": torch.zeros(3, 4, 4)},
            "mode must be one of",
        ),
        ("uap", {"perturbation": torch.zeros(4, 4)}, r"must be a \(3, H, W\) tensor"),
        (
            "uap",
            {"perturbation": torch.zeros(3, 4, 4), "path": "x"},
            "either perturbation= or path=",
        ),
    ],
)
def test_bad_options_raise_value_error(name, options, reason, metric):
    """Each bad option is refused for its own reason (not a generic wrapped TypeError)."""
    with pytest.raises(ValueError, match=reason):
        make_attack(name, metric, **options)


def test_non_callable_metric_and_bad_metric_output_raise(images):
    with pytest.raises(ValueError, match="callable"):
        make_attack("fgsm", None)
    with pytest.raises(ValueError, match=r"\(B, 1\)"):
        make_attack("fgsm", lambda x: x.mean())(images)


def test_uap_needs_a_perturbation_source(metric, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="no .name"):
        make_attack("uap", metric)
    monkeypatch.setattr(uap_module, "WEIGHTS_DIR", tmp_path)
    metric.name = "toy"
    with pytest.raises(FileNotFoundError, match="uap-toy-v1"):
        make_attack("uap", metric)


@pytest.mark.parametrize("name", NAMES)
def test_metric_modes_are_restored(name, metric, images, uap_perturbation):
    attack = build(name, metric, uap_perturbation)
    metric.train()
    metric.modes_seen.clear()
    attack(images, torch.Generator().manual_seed(0))
    assert metric.training and all(m.training for m in metric.modules())
    assert not any(metric.modes_seen)  # the attack ran the metric in eval mode
    metric.eval()
    metric.bn.train()
    attack(images, torch.Generator().manual_seed(0))
    assert metric.bn.training and not metric.training and not metric.conv.training


@pytest.mark.parametrize("name", NAMES)
def test_works_under_no_grad(name, metric, images, uap_perturbation):
    attack = build(name, metric, uap_perturbation)
    with torch.no_grad():
        adv = attack(images, torch.Generator().manual_seed(0))
    assert (scores(metric, adv) > scores(metric, images)).all()


@pytest.mark.parametrize("name", GRADIENT_NAMES)
def test_defense_in_the_loop_raises_defended_score(name, metric, images):
    attack = make_attack(name, metric, defense=blur)
    adv = attack(images, torch.Generator().manual_seed(0))
    assert (scores(metric, blur(adv)) > scores(metric, blur(images)) + 1e-3).all()
    assert "defense=blur" in repr(attack)


def test_stochastic_defense_gets_the_generator_and_eot_averages(metric, images):
    seen = []

    class NoisyDefense(nn.Module):
        def forward(self, x, generator=None):
            seen.append(generator)
            noise = torch.randn(x.shape, generator=generator)
            return (x + 0.01 * noise).clamp(0, 1)

    defense = NoisyDefense().train()
    gen = torch.Generator().manual_seed(3)
    attack = make_attack("ifgsm", metric, steps=3, eot_samples=4, defense=defense)
    attack(images, gen)
    assert len(seen) == 12 and all(g is gen for g in seen)
    assert defense.training  # its mode is restored too


def test_eot_transform_is_called_per_sample_and_gradient_is_the_mean(images):
    metric = LinearMetric(images.shape[1:])
    calls = []

    def shift(x, generator):
        calls.append(1)
        return x + 0.01 * torch.rand(1, generator=generator)  # stays inside [0, 1]

    attack = make_attack("ifgsm", metric, steps=2, eot_samples=3, eot_transform=shift)
    attack(images, torch.Generator().manual_seed(0))
    assert len(calls) == 6
    grad, value = attack.objective_grad(images, torch.Generator().manual_seed(0))
    assert torch.allclose(grad, metric.w.expand_as(images))
    assert value.shape == (2,)


def test_random_shift_and_noise_transforms_are_seeded(images):
    for transform in (RandomShift(2), GaussianNoise(0.1)):
        a = transform(images, torch.Generator().manual_seed(0))
        b = transform(images, torch.Generator().manual_seed(0))
        assert torch.equal(a, b) and a.shape == images.shape
        assert a.min() >= 0 and a.max() <= 1


def test_repr_shows_hyperparameters(metric):
    assert repr(make_attack("mifgsm", metric)) == (
        "MIFGSM(eps=0.03922, steps=10, alpha=0.003922, momentum=1, eot_samples=1)"
    )
    text = repr(make_attack("ifgsm", metric, steps=3, eot_transform=GaussianNoise(0.1)))
    assert text == "IFGSM(eps=0.03922, steps=3, alpha=0.003922, eot_samples=1, " + (
        "eot_transform=GaussianNoise)"
    )
    assert repr(make_attack("zhang-ssim", metric)) == (
        "ZhangSSIM(steps=10, alpha=0.005, ssim_weight=1, eot_samples=1)"
    )
    assert repr(UAP(metric, perturbation=torch.zeros(3, 4, 5))) == (
        "UAP(eps=0.03922, mode=tile, size=(4, 5), source=tensor)"
    )


# --------------------------------------------------------------- exact behaviour
def mid_images() -> torch.Tensor:
    gen = torch.Generator().manual_seed(4)
    return 0.3 + 0.4 * torch.rand(2, 3, 16, 16, generator=gen)


def test_fgsm_and_ifgsm_step_along_the_gradient_sign():
    x = mid_images()
    metric = LinearMetric(x.shape[1:])
    expected = x + 10 / 255 * metric.w.sign()
    assert torch.allclose(make_attack("fgsm", metric)(x), expected, atol=1e-6)
    assert torch.allclose(make_attack("ifgsm", metric)(x), expected, atol=1e-6)
    assert torch.allclose(make_attack("mifgsm", metric)(x), expected, atol=1e-6)
    assert torch.allclose(make_attack("amifgsm", metric)(x), expected, atol=1e-6)


def test_amifgsm_per_image_budget():
    x = mid_images()
    metric = LinearMetric(x.shape[1:])
    budgets = torch.tensor([2 / 255, 6 / 255])
    adv = make_attack("amifgsm", metric, budget_fn=lambda imgs: budgets)(x)
    linf = (adv - x).abs().flatten(1).amax(dim=1)
    assert torch.allclose(linf, budgets, atol=1e-6)
    with pytest.raises(ValueError, match="budget_fn"):
        make_attack("amifgsm", metric, budget_fn=lambda imgs: torch.tensor([0.1]))(x)


def test_madc_takes_signed_steps_then_holds_the_rmse_level():
    x = mid_images()
    metric = LinearMetric(x.shape[1:])
    sign = metric.w.expand_as(x).sign()
    one_step = make_attack("madc", metric, steps=1)(x)
    assert torch.allclose(one_step, x + sign / 255, atol=1e-6)
    free = make_attack("madc", metric, steps=3, eps=1.0)(x)
    assert (free - x).abs().max() <= 3 / 255 + 1e-6
    held = make_attack("madc", metric, steps=8, eps=2 / 255)(x)
    rmse = (held - x).square().mean(dim=(1, 2, 3)).sqrt()
    assert torch.allclose(rmse, torch.full_like(rmse, 2 / 255), atol=1e-6)
    assert (metric(held) > metric(x)).all()


def test_ssim_matches_scikit_image():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 20, 17, generator=gen, dtype=torch.float64)
    y = (x + 0.1 * torch.randn(x.shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    ours = ssim(x, y)
    for i in range(2):
        ref = structural_similarity(
            x[i].numpy(),
            y[i].numpy(),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=0,
        )
        assert abs(ours[i].item() - ref) < 1e-10
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError):
        ssim(x[..., :10], y[..., :10])
    with pytest.raises(ValueError):
        ssim(x, y[:1])


def test_haar_is_orthonormal_and_low_frequency_is_block_mean():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 8, 6, generator=gen, dtype=torch.float64)
    bands = haar_dwt(x)
    assert torch.allclose(haar_idwt(*bands), x)
    energy = sum(b.square().sum() for b in bands)
    assert torch.allclose(energy, x.square().sum())
    block_mean = F.avg_pool2d(x, 2).repeat_interleave(2, -2).repeat_interleave(2, -1)
    assert torch.allclose(low_frequency(x), block_mean)
    assert low_frequency(torch.rand(1, 3, 7, 5)).shape == (1, 3, 7, 5)
    with pytest.raises(ValueError):
        haar_dwt(torch.rand(1, 3, 7, 6))


def test_color_curves():
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    zero = torch.zeros(1, 3, 64)
    assert torch.allclose(apply_color_curves(x, zero), x, atol=1e-6)
    assert curve_deviation(zero).item() == pytest.approx(0.0, abs=1e-12)
    logits = torch.log(torch.tensor([3.0, 1.0])).expand(1, 3, 2)
    levels = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    out = apply_color_curves(levels, logits)[0, 0, 0]
    assert torch.allclose(out, torch.tensor([0.0, 0.375, 0.75, 0.875, 1.0]))
    with pytest.raises(ValueError):
        apply_color_curves(x, torch.zeros(1, 2, 4))


def test_spatial_activity_map():
    flat = torch.full((1, 3, 12, 12), 0.5)
    assert torch.equal(spatial_activity_map(flat), torch.ones(1, 1, 12, 12))
    edge = torch.zeros(1, 3, 12, 20)
    edge[..., 10:] = 1.0
    sam = spatial_activity_map(edge)
    assert sam.shape == (1, 1, 12, 20) and sam.max() == 1.0 and sam.min() == 0.0
    assert sam[0, 0, 6, 9:11].eq(1).all() and sam[0, 0, 6, :4].eq(0).all()


def test_ssah_uses_metric_features_of_a_linearity_like_model():
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = IQAModel(
                TrunkSpec((1, 1, 1, 1), groups=8, width_per_group=4, stem_width=32)
            )
            self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.5))
            self.register_buffer("std", torch.full((1, 3, 1, 1), 0.25))

        def forward(self, x):
            return self.model((x - self.mean) / self.std)[-1]

    wrapped = Wrapped().eval()
    features = metric_features(wrapped)
    assert features is not None and features(torch.rand(2, 3, 32, 32)).shape == (2, 512 + 1024)
    assert metric_features(ToyMetric()) is None
    assert "features=True" in repr(make_attack("ssah", wrapped))


# ----------------------------------------------------------------------- UAP
def test_fit_perturbation_tiles_and_resizes():
    p = torch.arange(3 * 2 * 3, dtype=torch.float32).view(3, 2, 3)
    tiled = fit_perturbation(p, 5, 4, "tile")
    assert tiled.shape == (3, 5, 4)
    assert torch.equal(tiled[:, :2, :3], p) and torch.equal(tiled[:, 2:4, 3], p[:, :, 0])
    assert fit_perturbation(p, 7, 9, "resize").shape == (3, 7, 9)
    with pytest.raises(ValueError):
        fit_perturbation(p, 4, 4, "warp")


def test_uap_clips_to_eps_and_tiles(images, metric):
    p = torch.full((3, 5, 5), 1.0)
    adv = UAP(metric, perturbation=p)(images)
    assert torch.allclose(adv, (images + 10 / 255).clamp(0, 1))


def test_perturbation_file_round_trip_and_manifest_check(tmp_path, metric, images):
    folder = tmp_path / "uap-toy-v1"
    folder.mkdir()
    p = torch.linspace(-0.03, 0.03, 3 * 4 * 4).view(3, 4, 4)
    save_perturbation(p, folder / "perturbation.safetensors", metric="toy")
    write_manifest(folder, "uap-toy", "v1")
    assert torch.equal(load_perturbation(folder), p)
    attack = UAP(metric, path=folder)
    assert str(folder) in repr(attack)
    (folder / "perturbation.safetensors").write_bytes(b"tampered")
    with pytest.raises(WeightsIntegrityError):
        load_perturbation(folder)


def test_train_uap_raises_the_score_within_eps_and_is_seeded(tmp_path, metric):
    gen = torch.Generator().manual_seed(0)
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"{i}.png")
        save_image(torch.rand(3, 12, 14, generator=gen), paths[-1])
    (tmp_path / "small.png").parent.mkdir(exist_ok=True)
    save_image(torch.rand(3, 6, 6, generator=gen), tmp_path / "small.png")
    options = dict(size=10, epochs=3, batch_size=2, lr=0.01, progress=False)
    metric.train()
    a = train_uap(
        metric,
        [*paths, tmp_path / "small.png"],
        generator=torch.Generator().manual_seed(1),
        **options,
    )
    b = train_uap(metric, paths, generator=torch.Generator().manual_seed(1), **options)
    assert metric.training
    assert torch.equal(a.perturbation, b.perturbation)
    assert a.images_used == 4 and a.steps == 6 and len(a.epoch_scores) == 3
    assert a.perturbation.abs().max() <= 10 / 255 + 1e-7
    assert a.epoch_scores[-1] > a.epoch_scores[0]
    with pytest.raises(ValueError, match="at least"):
        train_uap(metric, [tmp_path / "small.png"], **options)


def test_train_uap_script_writes_weights_with_manifest(tmp_path, metric):
    from training.uap import train_and_save

    data = tmp_path / "train"
    gen = torch.Generator().manual_seed(0)
    for i in range(3):
        save_image(torch.rand(3, 12, 12, generator=gen), data / f"{i}.png")
    out = tmp_path / "weights" / "uap-toy-v1"
    train_and_save(metric, data, out, seed=0, progress=False, size=8, epochs=1, batch_size=2)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["name"] == "uap-ToyMetric" and manifest["training"]["steps"] == 2
    assert set(manifest["files"]) == {"perturbation.safetensors"}
    p = load_perturbation(out)
    assert p.shape == (3, 8, 8) and not math.isnan(float(p.sum()))
    with pytest.raises(ValueError, match="never overwritten"):
        train_and_save(metric, data, out, progress=False, size=8, epochs=1)
    assert [p.name for p in out.parent.iterdir()] == ["uap-toy-v1"]  # no staging left
    assert np.isfinite(manifest["training"]["wall_time_s"])


@pytest.mark.parametrize(
    "extra",
    [
        ["--epochs", "0"],
        ["--batch-size", "0"],
        ["--size", "-8"],
        ["--lr", "0"],
        ["--eps", "-0.1"],
        ["--threads", "0"],
    ],
)
def test_train_uap_cli_refuses_bad_options(extra, capsys):
    from training.uap import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(extra)
    assert info.value.code == 2
    assert extra[0] in capsys.readouterr().err


# ------------------------------------------- pinned updates and penalty weights
class ScriptedLinearMetric(nn.Module):
    """``score = sum(G_k * x)`` on its ``k``-th call: the gradient changes from call to call."""

    def __init__(self, grads: list[torch.Tensor]) -> None:
        super().__init__()
        self.grads = grads
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.grads[self.calls]
        self.calls += 1
        return (x * g).flatten(1).sum(dim=1, keepdim=True)


class QuadraticMetric(nn.Module):
    """``score = -sum((x - target)^2)``: the gradient depends on where it is taken."""

    def __init__(self, target: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("target", target)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -(x - self.target).square().flatten(1).sum(dim=1, keepdim=True)


def linf_project(x: torch.Tensor, x0: torch.Tensor, eps) -> torch.Tensor:
    return torch.minimum(torch.maximum(x, x0 - eps), x0 + eps).clamp(0, 1)


def momentum_walk(x0, grads, alpha, eps, momentum, direction):
    """The documented rule: ``g_t = direction(grad_t) + momentum * g_{t-1}``,
    ``x <- project(x + alpha * sign(g_t))``."""
    x, velocity = x0.clone(), torch.zeros_like(x0)
    for grad in grads:
        velocity = direction(grad) + momentum * velocity
        x = linf_project(x + alpha * velocity.sign(), x0, eps)
    return x


def l1_normalised(grad: torch.Tensor) -> torch.Tensor:
    return grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)


def test_mifgsm_accumulates_momentum_of_changing_gradients():
    x = mid_images()
    gen = torch.Generator().manual_seed(7)
    g0 = torch.randn(x.shape, generator=gen)
    # The second gradient mostly undoes the first: only momentum keeps the first direction.
    g1 = -0.5 * g0 + 0.3 * torch.randn(x.shape, generator=gen)
    g2 = torch.randn(x.shape, generator=gen)
    grads = [g0, g1, g2]
    metric = ScriptedLinearMetric(grads)
    alpha, eps = 4 / 255, 10 / 255
    attack = make_attack("mifgsm", metric, steps=3, alpha=alpha, eps=eps, momentum=0.9)
    adv = attack(x, torch.Generator().manual_seed(0))
    assert metric.calls == 3  # one metric call per step (no EOT)

    expected = x.clone()
    velocity = g0
    expected = linf_project(expected + alpha * velocity.sign(), x, eps)
    velocity = g1 + 0.9 * velocity
    expected = linf_project(expected + alpha * velocity.sign(), x, eps)
    velocity = g2 + 0.9 * velocity
    expected = linf_project(expected + alpha * velocity.sign(), x, eps)
    assert torch.allclose(adv, expected, atol=1e-6)
    assert torch.allclose(momentum_walk(x, grads, alpha, eps, 0.9, lambda g: g), expected)
    without_momentum = momentum_walk(x, grads, alpha, eps, 0.0, lambda g: g)
    assert (without_momentum - expected).abs().max() > 1 / 255  # momentum matters here


def test_amifgsm_normalises_gradients_and_steps_eps_over_steps():
    x = mid_images()
    gen = torch.Generator().manual_seed(8)
    # Gradient magnitudes differ wildly between steps and between the two images.
    scales = [torch.tensor([50.0, 0.02]), torch.tensor([1.0, 3.0]), torch.tensor([0.1, 40.0])]
    grads = [s.view(2, 1, 1, 1) * torch.randn(x.shape, generator=gen) for s in scales]
    metric = ScriptedLinearMetric(grads)
    adv = make_attack("amifgsm", metric, steps=3, momentum=1.0)(x)
    assert metric.calls == 3
    eps = 10 / 255
    expected = x.clone()
    velocity = torch.zeros_like(x)
    for grad in grads:
        velocity = l1_normalised(grad) + velocity
        expected = linf_project(expected + eps / 3 * velocity.sign(), x, eps)
    assert torch.allclose(adv, expected, atol=1e-6)
    # Both documented details change the result for these gradients.
    unnormalised = momentum_walk(x, grads, eps / 3, eps, 1.0, lambda g: g)
    full_step = momentum_walk(x, grads, eps, eps, 1.0, l1_normalised)
    assert (unnormalised - expected).abs().max() > 1 / 255
    assert (full_step - expected).abs().max() > 1 / 255


def test_amifgsm_two_steps_with_a_per_image_budget():
    x = mid_images()
    gen = torch.Generator().manual_seed(9)
    scales = [torch.tensor([30.0, 0.05]), torch.tensor([1.0, 2.0])]
    grads = [s.view(2, 1, 1, 1) * torch.randn(x.shape, generator=gen) for s in scales]
    budgets = torch.tensor([4 / 255, 8 / 255])
    metric = ScriptedLinearMetric(grads)
    adv = make_attack("amifgsm", metric, steps=2, momentum=0.5, budget_fn=lambda imgs: budgets)(x)
    eps = budgets.view(2, 1, 1, 1)
    v1 = l1_normalised(grads[0])
    x1 = linf_project(x + eps / 2 * v1.sign(), x, eps)
    v2 = l1_normalised(grads[1]) + 0.5 * v1
    expected = linf_project(x1 + eps / 2 * v2.sign(), x, eps)
    assert torch.allclose(adv, expected, atol=1e-6)
    unnormalised = momentum_walk(x, grads, eps / 2, eps, 0.5, lambda g: g)
    assert (unnormalised - expected).abs().max() > 1 / 255


def half_flat_images() -> torch.Tensor:
    """Left half a flat grey 0.5, right half textured (mid-range noise)."""
    gen = torch.Generator().manual_seed(10)
    x = torch.full((2, 3, 16, 16), 0.5)
    x[..., 8:] = 0.3 + 0.4 * torch.rand(2, 3, 16, 8, generator=gen)
    return x


def test_korhonen_leaves_flat_regions_untouched():
    x = half_flat_images()
    mask = spatial_activity_map(x)
    assert mask[..., :4].eq(0).all()  # far enough from the texture: no activity at all
    metric = LinearMetric(x.shape[1:], seed=3)
    adv = make_attack("korhonen", metric)(x, torch.Generator().manual_seed(0))
    assert torch.equal(adv[..., :4], x[..., :4])
    textured = (adv - x)[..., 9:15].abs()
    assert (textured > 1e-4).float().mean() > 0.9
    assert (metric(adv) > metric(x)).all()


def test_korhonen_adam_walks_the_masked_perturbation():
    """Pinned against the documented rule: Adam on ``delta`` maximising
    ``score(clip(x0 + m * delta)) / metric_range`` with ``m`` the activity map."""
    x = half_flat_images()
    gen = torch.Generator().manual_seed(11)
    metric = QuadraticMetric(x + 0.012 * torch.randn(x.shape, generator=gen))
    steps, lr = 6, 0.005
    adv = make_attack("korhonen", metric, steps=steps, alpha=lr)(x)

    mask = spatial_activity_map(x)
    delta = torch.zeros_like(x, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = -metric((x + mask * delta).clamp(0, 1)).sum() / 100.0
        loss.backward()
        optimizer.step()
    expected = (x + mask * delta.detach()).clamp(0, 1)
    assert torch.allclose(adv, expected, atol=1e-6)
    partial = (mask > 0.05) & (mask < 0.95)
    assert partial.float().mean() > 0.1  # the mask really scales many pixels


class ProjectedFeatures:
    """Toy features for SSAH: a fixed random projection of the image to 16 numbers."""

    def __init__(self, shape: tuple[int, ...], seed: int = 3) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.projection = torch.randn(math.prod(shape), 16, generator=gen)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.projection


def run_weighted(name: str, metric, x, **options) -> torch.Tensor:
    return make_attack(name, metric, **options)(x, torch.Generator().manual_seed(0))


def test_ssah_low_frequency_weight_keeps_the_low_band(metric, images):
    free = run_weighted("ssah", metric, images, lf_weight=0.0)
    held = run_weighted("ssah", metric, images, lf_weight=1000.0)
    assert not torch.allclose(free, held, atol=1e-4)

    def lf_change(adv):
        return (low_frequency(adv) - low_frequency(images)).abs().mean()

    assert lf_change(held) < 0.5 * lf_change(free)


def test_ssah_feature_weight_pushes_features_away(metric, images):
    features = ProjectedFeatures(images.shape[1:])
    clean = features(images)

    def similarity(adv):
        return F.cosine_similarity(features(adv), clean, dim=1)

    options = dict(feature_fn=features, lf_weight=0.0)
    plain = run_weighted("ssah", metric, images, feature_weight=0.0, **options)
    pushed = run_weighted("ssah", metric, images, feature_weight=10.0, **options)
    assert not torch.allclose(plain, pushed, atol=1e-4)
    assert (similarity(pushed) < similarity(plain) - 0.05).all()


def test_zhang_ssim_weight_keeps_ssim_high(metric, images):
    free = run_weighted("zhang-ssim", metric, images, ssim_weight=0.0)
    held = run_weighted("zhang-ssim", metric, images, ssim_weight=100.0)
    assert not torch.allclose(free, held, atol=1e-4)
    assert (ssim(held, images) > ssim(free, images) + 1e-3).all()


def test_adv_cf_regulariser_keeps_the_curve_near_identity(metric):
    pieces = 8
    gen = torch.Generator().manual_seed(12)
    x = torch.rand(2, 3, 16, 16, generator=gen)
    levels = torch.arange(pieces + 1) / pieces  # the knots: the output there is the curve
    x[..., 0, : pieces + 1] = levels

    def deviation(adv):  # curve_deviation, read off the filtered knots
        knots = adv[..., 0, 1 : pieces + 1]
        return (knots - levels[1:]).square().mean(dim=(1, 2))

    free = run_weighted("adv-cf", metric, x, pieces=pieces, reg_weight=0.0)
    held = run_weighted("adv-cf", metric, x, pieces=pieces, reg_weight=1000.0)
    assert not torch.allclose(free, held, atol=1e-4)
    assert (deviation(held) < 0.5 * deviation(free)).all()


@pytest.mark.parametrize(
    "name, options, reason",
    [
        ("ifgsm", {"eps": "0.03"}, r"eps must be a number, got '0\.03'"),
        ("ifgsm", {"alpha": True}, "alpha must be a number, got True"),
        ("ssah", {"margin": None}, "margin must be a number, got None"),
    ],
)
def test_non_numbers_are_refused_as_such(name, options, reason, metric):
    with pytest.raises(ValueError, match=reason):
        make_attack(name, metric, **options)


def test_ssah_refuses_a_feature_fn_that_is_not_callable(metric):
    with pytest.raises(ValueError, match="feature_fn must be callable"):
        make_attack("ssah", metric, feature_fn="features")


def test_perturbation_file_without_its_key_is_refused(tmp_path, metric):
    path = tmp_path / "perturbation.safetensors"
    save_file({"delta": torch.zeros(3, 4, 4)}, str(path))
    with pytest.raises(ValueError, match=r"has no 'perturbation' tensor \(keys: \['delta'\]\)"):
        load_perturbation(path)
    with pytest.raises(ValueError, match="has no 'perturbation' tensor"):
        UAP(metric, path=path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_perturbation_is_refused(tmp_path, metric, value):
    bad = torch.zeros(3, 4, 4)
    bad[1, 2, 3] = value
    with pytest.raises(ValueError, match="a perturbation must be a finite float tensor"):
        UAP(metric, perturbation=bad)
    path = tmp_path / "perturbation.safetensors"
    save_file({"perturbation": bad}, str(path))  # bypasses save_perturbation's check
    with pytest.raises(ValueError, match="a perturbation must be a finite float tensor"):
        load_perturbation(path)


def test_zhang_ssim_refuses_images_smaller_than_its_window(metric):
    attack = make_attack("zhang-ssim", metric, steps=1)
    with pytest.raises(ValueError, match="zhang-ssim needs images of at least 11x11"):
        attack(torch.full((1, 3, 10, 16), 0.5))
