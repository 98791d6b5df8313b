"""The diffusion core: network, schedule maps, loss, purification, loading, training script."""

from __future__ import annotations

import json
import math
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from torch import nn

from common.image_io import save_image
from common.weights_manifest import WeightsIntegrityError, write_manifest
from diffusion import (
    PixelUnshuffleUNet,
    TimestepSampler,
    ddpm_scheduler_config,
    denoise_one_shot,
    epsilon_mse_loss,
    load_denoiser,
    make_generator,
    purify,
    sigma_to_timestep,
    timestep_to_sigma,
    training_scheduler,
)
from diffusion.gaussian_benchmark import add_gaussian_noise, mean_psnr
from schedulers import make_scheduler


def tiny_unet(seed: int = 0, unshuffle: int = 2) -> PixelUnshuffleUNet:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return PixelUnshuffleUNet(
            unshuffle=unshuffle, block_out_channels=(8, 16), norm_num_groups=4
        ).eval()


class ZeroNoise(nn.Module):
    """Predicts eps = 0 everywhere, so x0 = x_t / sqrt(alphabar_t) exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, sample: torch.Tensor, timestep: int) -> torch.Tensor:
        return sample * self.anchor


def images(batch: int = 2, height: int = 16, width: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


# --- network ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width"), [(16, 20), (17, 23), (5, 7), (1, 1), (33, 8)])
def test_denoiser_keeps_any_size(height: int, width: int) -> None:
    model = tiny_unet()
    with torch.no_grad():
        out = model(torch.rand(2, 3, height, width) * 2 - 1, 10)
    assert out.shape == (2, 3, height, width)
    assert torch.isfinite(out).all()


def test_denoiser_size_multiple_and_batched_timesteps() -> None:
    model = tiny_unet(unshuffle=4)
    assert model.size_multiple == 8
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        both = model(x, torch.tensor([3, 500]))
        first = model(x[:1], 3)
        second = model(x[1:], 500)
    torch.testing.assert_close(both, torch.cat([first, second]), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(first, model(x[:1], 500))


def test_denoiser_crop_matches_padded_input() -> None:
    """Padding is internal: an image already at the size multiple is not padded."""
    model = tiny_unet()
    x = torch.rand(1, 3, 8, 12) * 2 - 1
    with torch.no_grad():
        assert model(x, 7).shape == x.shape


def test_denoiser_config_and_save_roundtrip(tmp_path: Path) -> None:
    model = tiny_unet()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == "PixelUnshuffleUNet"
    assert config["unshuffle"] == 2 and config["block_out_channels"] == [8, 16]
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = PixelUnshuffleUNet.from_pretrained(tmp_path, local_files_only=True).eval()
    x = images() * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, 30), model(x, 30), atol=0, rtol=0)


def test_denoiser_rejects_bad_input() -> None:
    model = tiny_unet()
    with pytest.raises(ValueError, match="B, 3, H, W"):
        model(torch.rand(3, 8, 8), 1)
    with pytest.raises(ValueError, match="B, 3, H, W"):
        model(torch.rand(1, 1, 8, 8), 1)
    with pytest.raises(ValueError, match="unshuffle"):
        PixelUnshuffleUNet(unshuffle=0)
    with pytest.raises(ValueError, match="level"):
        PixelUnshuffleUNet(block_out_channels=())


def test_default_denoiser_size() -> None:
    model = PixelUnshuffleUNet()
    params = sum(p.numel() for p in model.parameters())
    assert params == 6_660_144
    assert params * 4 < 30e6  # fp32 safetensors well under 50 MB


# --- noise schedule --------------------------------------------------------------------------


def test_training_schedule_is_linear_ddpm() -> None:
    scheduler = training_scheduler()
    config = ddpm_scheduler_config()
    assert config["num_train_timesteps"] == 1000
    assert (config["beta_start"], config["beta_end"], config["beta_schedule"]) == (
        1e-4,
        0.02,
        "linear",
    )
    assert scheduler.config.prediction_type == "epsilon"
    assert abs(float(scheduler.alphas_cumprod[0]) - 0.9999) < 1e-7
    assert abs(float(scheduler.alphas_cumprod[999]) - 4.0358e-5) < 1e-8
    assert training_scheduler() is not scheduler


@pytest.mark.parametrize(
    ("sigma255", "timestep"), [(1, 0), (5, 8), (10, 20), (15, 32), (25, 56), (50, 114)]
)
def test_sigma_to_timestep_pinned(sigma255: float, timestep: int) -> None:
    assert sigma_to_timestep(sigma255 / 255) == timestep


def test_sigma_timestep_roundtrip() -> None:
    assert abs(timestep_to_sigma(20) * 255 - 10.1234) < 1e-3
    assert abs(timestep_to_sigma(56) * 255 - 24.9262) < 1e-3
    for t in (0, 1, 17, 56, 300, 999):
        assert sigma_to_timestep(timestep_to_sigma(t)) == t
    sigmas = [timestep_to_sigma(t) for t in range(1000)]
    assert all(a < b for a, b in pairwise(sigmas))
    # alphabar = 1 / (1 + 4 sigma^2)
    alpha_bar = float(training_scheduler().alphas_cumprod[300])
    assert math.isclose(1 / (1 + 4 * timestep_to_sigma(300) ** 2), alpha_bar, rel_tol=1e-6)


@pytest.mark.parametrize("sigma", [0.0, -0.1, float("nan"), float("inf")])
def test_sigma_to_timestep_rejects_bad_sigma(sigma: float) -> None:
    with pytest.raises(ValueError, match="sigma"):
        sigma_to_timestep(sigma)


@pytest.mark.parametrize("timestep", [-1, 1000])
def test_timestep_to_sigma_rejects_bad_timestep(timestep: int) -> None:
    with pytest.raises(ValueError, match="timestep"):
        timestep_to_sigma(timestep)


# --- training loss ---------------------------------------------------------------------------


def test_timestep_sampler_focus_and_coverage() -> None:
    sampler = TimestepSampler()
    t = sampler.sample(50_000, torch.Generator().manual_seed(0))
    assert t.dtype == torch.int64 and t.shape == (50_000,)
    assert int(t.min()) == 0 and int(t.max()) == 999
    assert 0.86 < (t < 400).float().mean().item() < 0.90  # 0.8 + 0.2 * 0.4
    assert 0.20 < (t < 60).float().mean().item() < 0.27
    assert (t > 900).sum() > 500
    again = sampler.sample(50_000, torch.Generator().manual_seed(0))
    assert torch.equal(t, again)
    assert "focus_max=400" in repr(sampler)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"focus_max": 0}, "focus_max"),
        ({"focus_max": 1001}, "focus_max"),
        ({"focus_prob": 1.5}, "focus_prob"),
        ({"power": 0}, "power"),
    ],
)
def test_timestep_sampler_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TimestepSampler(**kwargs)


def test_epsilon_mse_loss_deterministic_and_differentiable() -> None:
    model = tiny_unet().train()
    scheduler = training_scheduler()
    clean = images(4, 16, 16) * 2 - 1
    t = torch.tensor([0, 20, 400, 999])
    loss = epsilon_mse_loss(model, scheduler, clean, t, torch.Generator().manual_seed(3))
    again = epsilon_mse_loss(model, scheduler, clean, t, torch.Generator().manual_seed(3))
    assert loss.dim() == 0 and loss.item() == again.item()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # a zero predictor scores E[eps^2] ~ 1
    zero = epsilon_mse_loss(ZeroNoise(), scheduler, clean, t, torch.Generator().manual_seed(3))
    assert 0.9 < zero.item() < 1.1


# --- purification ----------------------------------------------------------------------------


def test_purify_shape_range_determinism() -> None:
    model = tiny_unet()
    x = images()
    scheduler, kept = make_scheduler("ddpm", 30, 3)
    with torch.no_grad():
        first = purify(x, model, scheduler, kept, generator=5)
        second = purify(x, model, make_scheduler("ddpm", 30, 3)[0], kept, generator=5)
        other = purify(x, model, scheduler, kept, generator=6)
    assert first.shape == x.shape and first.dtype == x.dtype and first.device == x.device
    assert first.min() >= 0.0 and first.max() <= 1.0
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_purify_accepts_generator_and_keeps_dtype() -> None:
    model = tiny_unet()
    x = images().double()
    scheduler, kept = make_scheduler("ddim", 19, 2)
    with torch.no_grad():
        a = purify(x, model, scheduler, kept, generator=torch.Generator().manual_seed(2))
        b = purify(x, model, scheduler, kept, generator=2)
    assert a.dtype == torch.float64
    assert torch.equal(a, b)


def test_purify_does_not_touch_global_rng() -> None:
    model = tiny_unet()
    scheduler, kept = make_scheduler("ddpm", 10, 2)
    state = torch.get_rng_state()
    with torch.no_grad():
        purify(images(), model, scheduler, kept, generator=None)
    assert torch.equal(state, torch.get_rng_state())


def test_purify_lets_gradients_flow() -> None:
    model = tiny_unet()
    x = images().requires_grad_(True)
    scheduler, kept = make_scheduler("ddpm", 20, 2)
    out = purify(x, model, scheduler, kept, generator=0)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with torch.no_grad():
        assert not purify(x, model, scheduler, kept, generator=0).requires_grad


def test_purify_single_step_with_zero_model_is_exact() -> None:
    """One kept step: output = clip(x0 + sqrt(1/alphabar - 1) * noise) via diffusers' step."""
    x = images()
    t = 56
    scheduler, kept = make_scheduler("ddpm", t, 1)
    out = purify(x, ZeroNoise(), scheduler, kept, generator=4)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    sigma = timestep_to_sigma(t)
    expected = (x + sigma * noise).clamp(0, 1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.rand(3, 8, 8), "B, 3, H, W"),
        (torch.rand(1, 1, 8, 8), "B, 3, H, W"),
        (torch.rand(1, 3, 8, 8) + 1.0, r"\[0, 1\]"),
        (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "float"),
    ],
)
def test_purify_rejects_bad_images(bad: torch.Tensor, message: str) -> None:
    scheduler, kept = make_scheduler("ddpm", 10, 2)
    with pytest.raises(ValueError, match=message):
        purify(bad, tiny_unet(), scheduler, kept)


def test_purify_rejects_mismatched_timesteps() -> None:
    scheduler, kept = make_scheduler("ddpm", 30, 3)
    with pytest.raises(ValueError, match="tail"):
        purify(images(), tiny_unet(), scheduler, [30, 20], generator=0)
    with pytest.raises(ValueError, match="empty"):
        purify(images(), tiny_unet(), scheduler, [], generator=0)
    ddim, ddim_kept = make_scheduler("ddim", 99, 10)
    with pytest.raises(ValueError, match="tail"):
        purify(images(), tiny_unet(), ddim, ddim_kept[:3], generator=0)
    with torch.no_grad():  # a tail of the grid is fine
        purify(images(), tiny_unet(), ddim, ddim_kept[-3:], generator=0)


def test_make_generator() -> None:
    gen = torch.Generator()
    assert make_generator(gen) is gen
    a = torch.rand(3, generator=make_generator(11))
    assert torch.equal(a, torch.rand(3, generator=torch.Generator().manual_seed(11)))
    assert isinstance(make_generator(None), torch.Generator)
    with pytest.raises(ValueError, match="seed"):
        make_generator("7")
    with pytest.raises(ValueError, match="seed"):
        make_generator(True)


def test_denoise_one_shot_zero_model_is_identity() -> None:
    x = images()
    out = denoise_one_shot(x, ZeroNoise(), ddpm_scheduler_config(), 10 / 255)
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="B, 3, H, W"):
        denoise_one_shot(x[0], ZeroNoise(), ddpm_scheduler_config(), 10 / 255)
    with pytest.raises(ValueError, match="float images"):
        denoise_one_shot((x * 255).byte(), ZeroNoise(), ddpm_scheduler_config(), 10 / 255)
    with pytest.raises(ValueError, match="NaN or inf"):
        denoise_one_shot(x / 0, ZeroNoise(), ddpm_scheduler_config(), 10 / 255)


def test_denoise_one_shot_pinned() -> None:
    x = images()
    noisy = add_gaussian_noise(x, 25 / 255, torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = denoise_one_shot(noisy, tiny_unet(), ddpm_scheduler_config(), 25 / 255)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert abs(out.mean().item() - 0.5087880) < 1e-4


# --- benchmark helpers -----------------------------------------------------------------------


def test_mean_psnr_and_noise() -> None:
    ref = torch.full((2, 3, 8, 8), 0.5)
    assert abs(mean_psnr(ref + 0.1, ref) - 20.0) < 1e-4
    noisy = add_gaussian_noise(ref, 0.1, torch.Generator().manual_seed(0))
    again = add_gaussian_noise(ref, 0.1, torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again)
    assert abs((noisy - ref).std().item() - 0.1) < 0.02
    with pytest.raises(ValueError, match="shape"):
        mean_psnr(ref, ref[:1])


# --- loading ---------------------------------------------------------------------------------


def _release(folder: Path) -> PixelUnshuffleUNet:
    model = tiny_unet()
    model.save_pretrained(folder)
    training_scheduler().save_pretrained(folder)
    write_manifest(folder, "tiny", "0", training={"steps": 0})
    return model


def test_load_denoiser_roundtrip(tmp_path: Path) -> None:
    model = _release(tmp_path)
    loaded, scheduler_config = load_denoiser(tmp_path, "cpu")
    assert not loaded.training
    assert scheduler_config["beta_end"] == 0.02
    x = images() * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, 5), model(x, 5), atol=0, rtol=0)
    for sampler in ("ddpm", "ddim"):
        scheduler, kept = make_scheduler(sampler, 49, 5, scheduler_config=scheduler_config)
        assert scheduler.config.beta_end == 0.02 and kept == [49, 39, 29, 19, 9]


def test_load_denoiser_checks_manifest(tmp_path: Path) -> None:
    _release(tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(WeightsIntegrityError, match="safetensors"):
        load_denoiser(tmp_path)
    with pytest.raises(ValueError, match="no weights folder"):
        load_denoiser(tmp_path / "missing")
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(WeightsIntegrityError, match="manifest"):
        load_denoiser(tmp_path)


# --- training script -------------------------------------------------------------------------


def _tiny_dataset(root: Path, count: int = 6) -> Path:
    folder = root / "photos" / "nested"
    gen = torch.Generator().manual_seed(0)
    for i in range(count):
        save_image(torch.rand(3, 40, 48, generator=gen), folder / f"img{i}.png")
    return root / "photos"


TINY_ARGS = [
    "--max-steps", "3", "--batch-size", "2", "--crop", "16", "--holdout", "2",
    "--val-crop", "16", "--val-every", "2", "--checkpoint-every", "2", "--log-every", "1",
    "--unshuffle", "2", "--channels", "8", "16", "--norm-groups", "4",
]  # fmt: skip


def test_train_script_end_to_end(tmp_path: Path) -> None:
    from training import ddpm as train_ddpm

    train_dir = _tiny_dataset(tmp_path)
    output = tmp_path / "weights" / "tiny"
    run_dir = tmp_path / "run"
    argv = ["--train-dir", str(train_dir), "--output", str(output), "--run-dir", str(run_dir)]
    assert train_ddpm.main(argv + TINY_ARGS) == 0
    manifest = json.loads((output / "manifest.json").read_text())
    training = manifest["training"]
    assert training["steps"] == 3 and training["num_images"] == 4
    assert training["holdout_images"] == ["img2.png", "img4.png"]
    assert set(training["validation"]) == {"psnr_sigma10", "psnr_sigma25"}
    assert training["init_validation"] == {}
    model, scheduler_config = load_denoiser(output)
    assert model.config.block_out_channels == (8, 16) or model.config.block_out_channels == [8, 16]
    assert scheduler_config["num_train_timesteps"] == 1000
    load_denoiser(run_dir / "ema_latest")
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_2", "step_3"]

    with pytest.raises(SystemExit, match="released weights"):
        train_ddpm.main(argv + TINY_ARGS)
    resumed = tmp_path / "weights" / "tiny2"
    argv2 = ["--train-dir", str(train_dir), "--output", str(resumed), "--run-dir", str(run_dir)]
    assert train_ddpm.main(argv2 + TINY_ARGS + ["--resume", "latest", "--max-steps", "4"]) == 0
    resumed_training = json.loads((resumed / "manifest.json").read_text())["training"]
    assert resumed_training["steps"] == 4
    # every session of the run is in the manifest: its command and the step it started at
    sessions = resumed_training["sessions"]
    assert [s["start_step"] for s in sessions] == [0, 3]
    assert "--resume" not in sessions[0]["command"] and "--resume" in sessions[1]["command"]
    assert sessions[1]["command"] == resumed_training["command"]
    # a checkpoint of another network shape is named, not an error from inside accelerate
    other = argv2[:3] + [str(tmp_path / "weights" / "tiny3")] + argv2[4:]
    wider = TINY_ARGS[:-4] + ["16", "32"] + TINY_ARGS[-2:]
    with pytest.raises(SystemExit, match=r"another shape .*'block_out_channels': \(16, 32\)"):
        train_ddpm.main(other + wider + ["--resume", "latest", "--max-steps", "5"])
    with pytest.raises(SystemExit, match="no checkpoint folder"):
        train_ddpm.main(other + TINY_ARGS + ["--resume", str(tmp_path / "nope")])
    fine = tmp_path / "weights" / "fine"
    argv3 = [
        "--train-dir",
        str(train_dir),
        "--output",
        str(fine),
        "--run-dir",
        str(tmp_path / "r3"),
    ]
    assert train_ddpm.main(argv3 + TINY_ARGS + ["--init", str(output)]) == 0
    # the starting weights are scored on the same held-out crops as the released ones were
    fine_training = json.loads((fine / "manifest.json").read_text())["training"]
    assert fine_training["init_validation"] == training["validation"]


def test_train_script_helpers(tmp_path: Path) -> None:
    from training import ddpm as train_ddpm
    from training import denoiser_run as denoiser_run

    paths = [Path(f"{i:02d}.png") for i in range(20)]
    train, holdout = train_ddpm.holdout_split(paths, 4)
    assert [p.name for p in holdout] == ["02.png", "08.png", "12.png", "18.png"]
    assert len(train) == 16 and not set(train) & set(holdout)
    with pytest.raises(SystemExit):
        train_ddpm.holdout_split(paths[:3], 4)
    args = train_ddpm.parse_args(["--output", "x", "--max-steps", "10", "--lr", "1e-3"])
    assert train_ddpm.learning_rate(args, 0, 0.0) == pytest.approx(1e-3 / 200)
    assert train_ddpm.learning_rate(args, 500, 0.0) == pytest.approx(1e-3)
    assert train_ddpm.learning_rate(args, 500, 1.0) == pytest.approx(5e-5)
    with pytest.raises(SystemExit):
        train_ddpm.parse_args(["--output", "x"])
    # the training timesteps: the default and a band focused on the purifier's noise levels
    assert "focus_max=400, focus_prob=0.8, power=1.5" in repr(train_ddpm.timestep_sampler(args))
    focused = train_ddpm.parse_args(
        ["--output", "x", "--max-steps", "1", "--focus-max", "160", "--focus-prob", "0.95"]
        + ["--focus-power", "1"]
    )
    sampler = train_ddpm.timestep_sampler(focused)
    assert repr(sampler).endswith("focus_max=160, focus_prob=0.95, power=1.0)")
    draws = sampler.sample(4000, torch.Generator().manual_seed(0))
    assert 0.93 < (draws < 160).float().mean().item() < 0.97
    for bad in (["--focus-max", "0"], ["--focus-prob", "1.5"], ["--focus-power", "0"]):
        with pytest.raises(SystemExit):
            train_ddpm.parse_args(["--output", "x", "--max-steps", "1", *bad])
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    with pytest.raises(SystemExit, match="not empty"):
        denoiser_run.check_output_free(tmp_path / "used")
    denoiser_run.check_output_free(tmp_path / "fresh")
    denoiser_run.check_output_free(tmp_path / "fresh", tmp_path / "runs" / "fresh")
    for run_dir in (tmp_path / "fresh", tmp_path / "fresh" / "run"):
        with pytest.raises(SystemExit, match="--run-dir .* lies in --output"):
            denoiser_run.check_output_free(tmp_path / "fresh", run_dir)
    with pytest.raises(SystemExit, match="is a file"):
        denoiser_run.check_output_free(tmp_path / "used" / "file")
    for budget in (["--max-steps", "0"], ["--max-minutes", "0"], ["--max-minutes", "-5"]):
        with pytest.raises(SystemExit):
            train_ddpm.parse_args(["--output", "x", *budget])
    scratch = train_ddpm.parse_args(["--output", "x", "--max-steps", "1", "--channels", "8", "16"])
    assert scratch.channels == [8, 16] and scratch.unshuffle == 4  # the rest from NETWORK_SHAPE
    config = {"unshuffle": 4, "block_out_channels": (8, 16), "layers_per_block": 1}
    train_ddpm.check_shape_matches({"channels": [8, 16]}, config, Path("w"))  # the same: fine
    with pytest.raises(ValueError, match=r"--init w fixes .*--channels \[8, 32\] \(the folder"):
        train_ddpm.check_shape_matches({"channels": [8, 32], "unshuffle": 4}, config, Path("w"))


def test_eval_script_compares_weights_on_the_same_noisy_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from evaluation import denoiser_eval as eval_denoiser

    _release(tmp_path / "w")
    _release(tmp_path / "w2")
    gen = torch.Generator().manual_seed(0)
    for name in ("kodim01.png", "kodim02.png"):
        save_image(
            torch.rand(3, 24, 32, generator=gen), tmp_path / "data" / "clean" / "eval" / name
        )
    out = tmp_path / "eval.json"
    weights = ["--weights", str(tmp_path / "w"), str(tmp_path / "w2")]
    argv = weights + ["--data", str(tmp_path / "data"), "--crop", "16"]
    assert eval_denoiser.main(argv + ["--no-timing", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["images"] == 2 and figures["source"] == "Kodak24"
    assert set(figures["psnr"]) == {"sigma10", "sigma25"}
    row = figures["psnr"]["sigma10"]
    assert row["timestep"] == 20
    # identical weights on identical noisy inputs: identical PSNR
    assert row[str(tmp_path / "w")] == row[str(tmp_path / "w2")]
    assert set(figures["models"]) == {str(tmp_path / "w"), str(tmp_path / "w2")}
    assert "one-shot x0" in capsys.readouterr().out


def test_eval_script_takes_an_image_folder_and_rejects_bad_input(tmp_path: Path) -> None:
    from evaluation import denoiser_eval as eval_denoiser

    _release(tmp_path / "w")
    folder = tmp_path / "mine"
    save_image(torch.rand(3, 20, 18, generator=torch.Generator().manual_seed(1)), folder / "a.jpg")
    save_image(torch.rand(3, 16, 16), folder / "sub" / "b.png")
    out = tmp_path / "eval.json"
    argv = ["--weights", str(tmp_path / "w"), "--images", str(folder), "--no-timing"]
    assert eval_denoiser.main(argv + ["--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["images"] == 2 and figures["source"] == str(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no images under"):
        eval_denoiser.main(["--weights", str(tmp_path / "w"), "--images", str(tmp_path / "empty")])
    with pytest.raises(SystemExit, match="not a folder"):
        eval_denoiser.main(["--weights", str(tmp_path / "w"), "--images", str(tmp_path / "nope")])
    with pytest.raises(SystemExit, match="twice"):
        eval_denoiser.main(["--weights", str(tmp_path / "w"), str(tmp_path / "w")])


def test_interleaved_timing_times_every_function_each_round() -> None:
    from evaluation import denoiser_eval as eval_denoiser

    calls: list[str] = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b")}
    seconds = eval_denoiser.interleaved_median_seconds(fns, repeats=3)
    assert calls == ["a", "b"] * 4  # warm-up round, then three interleaved rounds
    assert set(seconds) == {"a", "b"} and all(s >= 0 for s in seconds.values())


def test_train_script_stops_on_signal_without_output(tmp_path: Path) -> None:
    import os
    import signal

    from training import ddpm as train_ddpm
    from training import denoiser_run as denoiser_run

    before = signal.getsignal(signal.SIGTERM)
    with denoiser_run.stop_requests() as received:
        os.kill(os.getpid(), signal.SIGTERM)
        assert received == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) is before

    output = tmp_path / "out"
    run_dir = tmp_path / "run"
    argv = ["--train-dir", str(_tiny_dataset(tmp_path)), "--output", str(output)]
    args = train_ddpm.parse_args(argv + ["--run-dir", str(run_dir)] + TINY_ARGS)
    assert train_ddpm.train(args, "test", [signal.SIGTERM]) == 1
    assert not output.exists()
    load_denoiser(run_dir / "ema_latest")


# --- tiles share one noise field ---------------------------------------------------------------


@pytest.mark.parametrize(("sampler", "steps"), [("ddpm", 1), ("ddim", 2)])
def test_tiles_take_crops_of_one_whole_image_noise_draw(sampler: str, steps: int) -> None:
    """With a pointwise network, tiles cut from one noise field blend back to exactly the
    whole-image result with that noise: no seams in the grain. (Independent draws per tile
    would average two noise fields along every overlap.)"""
    from purifier import DiffusionPurifier, PurifierConfig

    config = PurifierConfig(t_star=39, steps=steps, sampler=sampler, ensemble=2)
    x = images(1, 50, 70, seed=4)
    tiled = DiffusionPurifier(ZeroNoise(), ddpm_scheduler_config(), config, seed=9)
    out = tiled.tiled(x, tile=24, overlap=4)
    noise = torch.randn((2, *x.shape), generator=torch.Generator().manual_seed(9))
    whole = DiffusionPurifier(ZeroNoise(), ddpm_scheduler_config(), config, seed=0)
    torch.testing.assert_close(out, whole.purify_all(x, noise=noise), rtol=0, atol=1e-6)
    small = images(1, 20, 20, seed=4)  # fits one tile: the whole-image path, noise as before
    torch.testing.assert_close(
        DiffusionPurifier(ZeroNoise(), ddpm_scheduler_config(), config, seed=9).tiled(
            small, tile=24, overlap=4
        ),
        DiffusionPurifier(ZeroNoise(), ddpm_scheduler_config(), config, seed=9)(small),
        rtol=0,
        atol=0,
    )
    with pytest.raises(ValueError, match="ensemble, \\*images.shape"):
        whole.purify_all(x, noise=noise[:1])
    with pytest.raises(ValueError, match="must match images"):
        purify(x, ZeroNoise(), *make_scheduler("ddpm", 39, 1), noise=noise[0, ..., :8])


@pytest.mark.parametrize(
    "text", ["{not json", '{"name": "tiny"}', "[1, 2]"], ids=["bad-json", "no-files", "a-list"]
)
def test_unreadable_manifest_is_refused(tmp_path: Path, text: str) -> None:
    _release(tmp_path)
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(WeightsIntegrityError, match="unreadable manifest"):
        load_denoiser(tmp_path)


def test_file_listed_in_the_manifest_but_missing_is_named(tmp_path: Path) -> None:
    _release(tmp_path)
    (tmp_path / "scheduler_config.json").unlink()
    with pytest.raises(
        WeightsIntegrityError, match=r"scheduler_config\.json is listed in .*missing"
    ):
        load_denoiser(tmp_path)


# --- mutation-testing additions ----------------------------------------------------------------


def test_purify_clamps_to_the_image_range_when_the_schedule_does_not_clip() -> None:
    """A loaded schedule may have ``clip_sample=False``: the final clamp alone keeps [0, 1]."""
    x = images()
    t = 56
    config = {**ddpm_scheduler_config(), "clip_sample": False}
    scheduler, kept = make_scheduler("ddpm", t, 1, scheduler_config=config)
    out = purify(x, ZeroNoise(), scheduler, kept, generator=4)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    unclamped = x + timestep_to_sigma(t) * noise
    assert unclamped.min() < 0 and unclamped.max() > 1  # the clamp has work to do
    torch.testing.assert_close(out, unclamped.clamp(0, 1), atol=1e-5, rtol=0)


def test_pad_to_multiple_reflects_only_where_both_sides_can() -> None:
    from diffusion.denoiser import _pad_to_multiple

    both = torch.arange(9.0).reshape(1, 1, 3, 3)  # pads 1 and 1: reflect
    expected = [[0, 1, 2, 1], [3, 4, 5, 4], [6, 7, 8, 7], [3, 4, 5, 4]]
    assert _pad_to_multiple(both, 4)[0, 0].tolist() == expected
    narrow = torch.arange(6.0).reshape(1, 1, 3, 2)  # width pad 2 is not < width 2: replicate
    expected = [[0, 1, 1, 1], [2, 3, 3, 3], [4, 5, 5, 5], [4, 5, 5, 5]]
    assert _pad_to_multiple(narrow, 4)[0, 0].tolist() == expected
    assert _pad_to_multiple(narrow.mT, 4)[0, 0].tolist() == torch.tensor(expected).mT.tolist()
    same = torch.rand(1, 1, 4, 8)
    assert _pad_to_multiple(same, 4) is same


def test_ensemble_runs_each_take_their_own_start_noise() -> None:
    from purifier import DiffusionPurifier, PurifierConfig

    config = PurifierConfig(t_star=39, steps=1, ensemble=2)
    x = images(1, 8, 8, seed=4)
    noise = torch.randn((2, *x.shape), generator=torch.Generator().manual_seed(9))
    purifier = DiffusionPurifier(ZeroNoise(), ddpm_scheduler_config(), config, seed=0)
    out = purifier.purify_all(x, noise=noise)
    sigma = timestep_to_sigma(39)
    expected = ((x + sigma * noise[0]).clamp(0, 1) + (x + sigma * noise[1]).clamp(0, 1)) / 2
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_tiled_start_noise_comes_from_the_calls_generator() -> None:
    from purifier import DiffusionPurifier, PurifierConfig

    config = PurifierConfig(t_star=39, steps=2, sampler="ddim")
    x = images(1, 30, 30, seed=4)
    purifier = DiffusionPurifier(ZeroNoise(), ddpm_scheduler_config(), config, seed=0)
    out = purifier.tiled(x, tile=20, overlap=4, generator=torch.Generator().manual_seed(9))
    noise = torch.randn((1, *x.shape), generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(out, purifier.purify_all(x, noise=noise), rtol=0, atol=1e-6)


def test_make_generator_takes_the_whole_seed_range() -> None:
    for seed in (-(2**63), 2**63, 2**64 - 1):
        expected = torch.rand(2, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(torch.rand(2, generator=make_generator(seed)), expected)
    for seed in (-(2**63) - 1, 2**64):
        with pytest.raises(ValueError, match="seed"):
            make_generator(seed)


class RecordingZeroNoise(ZeroNoise):
    """``ZeroNoise`` that records the timestep of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def forward(self, sample: torch.Tensor, timestep: int) -> torch.Tensor:
        self.seen.append(int(timestep))
        return super().forward(sample, timestep)


@pytest.mark.parametrize(("sampler", "t_star", "steps"), [("ddpm", 60, 3), ("ddim", 39, 4)])
def test_purify_conditions_each_call_on_its_own_step(sampler: str, t_star: int, steps: int) -> None:
    model = RecordingZeroNoise()
    scheduler, kept = make_scheduler(sampler, t_star, steps)
    purify(images(1, 8, 8), model, scheduler, kept, generator=0)
    assert model.seen == kept


class ConstantNoise(ZeroNoise):
    """Predicts eps = -5 everywhere: x0 = x_t / sqrt(ab) + 5 sqrt(1 / ab - 1), past 1."""

    def forward(self, sample: torch.Tensor, timestep: int) -> torch.Tensor:
        return sample * self.anchor - 5.0


def test_denoise_one_shot_clamps_when_the_schedule_does_not_clip() -> None:
    x = images()
    sigma = 25 / 255
    config = {**ddpm_scheduler_config(), "clip_sample": False}
    out = denoise_one_shot(x, ConstantNoise(), config, sigma)
    shift = 5.0 * timestep_to_sigma(sigma_to_timestep(sigma))  # 10 sigma_t in [-1, 1] units
    assert (x + shift).max() > 1  # the clamp has work to do
    torch.testing.assert_close(out, (x + shift).clamp(0, 1), atol=1e-5, rtol=0)


def test_training_progress_sessions_survive_a_checkpoint_and_old_ones_load() -> None:
    from training.denoiser_run import TrainingProgress

    progress = TrainingProgress(torch.Generator().manual_seed(0))
    progress.start_session("train --max-minutes 10")
    progress.step, progress.seconds = 7, 12.34
    restored = TrainingProgress(torch.Generator())
    restored.load_state_dict(progress.state_dict())
    restored.start_session("train --resume latest")
    assert restored.step == 7 and restored.seconds == 12.34
    assert restored.sessions == [
        {"command": "train --max-minutes 10", "start_step": 0, "start_seconds": 0.0},
        {"command": "train --resume latest", "start_step": 7, "start_seconds": 12.3},
    ]
    assert progress.sessions == restored.sessions[:1]  # the saved state is a copy
    older = {k: v for k, v in progress.state_dict().items() if k != "sessions"}
    legacy = TrainingProgress(torch.Generator())
    legacy.load_state_dict(older)  # a checkpoint written before sessions were recorded
    assert legacy.sessions == [] and legacy.step == 7
