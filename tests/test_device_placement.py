"""Device placement without a GPU: the "meta" device stands in for CUDA.

A meta tensor mixed with a non-scalar CPU tensor raises as a CUDA one would, so a run on meta
shows that no CPU tensor is mixed in. Random draws are checked by ``GeneratorDeviceCheck``: a
draw whose generator sits on another device than the tensor it makes is what CUDA refuses
("Expected a 'cuda' device type for generator"). Meta tensors hold no values, so the checks
that read values (``check_images``) are switched off here.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import pytest
import torch
from conftest import write_tiny_release, write_tiny_standin
from torch.overrides import TorchFunctionMode

import attacks.base
import diffusion.purification
import purifier.diffusion_purifier
from attacks.eot import GaussianNoise
from diffusion import load_denoiser
from model import MetricModel
from purifier import DiffusionPurifier, PurifierConfig

META = torch.device("meta")
RANDOM_DRAWS = {torch.randn, torch.rand, torch.randint, torch.randperm, torch.normal}


class GeneratorDeviceCheck(TorchFunctionMode):
    """Raise for a random draw whose ``generator`` is on another device type than its output
    (CPU generators must draw on the CPU and move the result, as CUDA requires)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        generator = kwargs.get("generator")
        if func in RANDOM_DRAWS and generator is not None:
            target = torch.device(kwargs.get("device") or "cpu").type
            if generator.device.type != target:
                raise RuntimeError(
                    f"{func.__name__} draws on {target} from a {generator.device.type} generator"
                )
        return func(*args, **kwargs)


@pytest.fixture
def no_value_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Meta tensors have no values to validate, and autocast refuses the meta device type."""
    for module in (attacks.base, diffusion.purification, purifier.diffusion_purifier):
        monkeypatch.setattr(module, "check_images", lambda *args, **kwargs: None)
    real_autocast = torch.autocast

    def autocast(device_type: str, *args: object, **kwargs: object):  # noqa: ANN202
        if device_type == "meta":
            return contextlib.nullcontext()
        return real_autocast(device_type, *args, **kwargs)

    monkeypatch.setattr(torch, "autocast", autocast)
    real_enabled = torch.is_autocast_enabled

    def is_autocast_enabled(*args: object) -> bool:
        return False if args and args[0] == "meta" else real_enabled(*args)

    monkeypatch.setattr(torch, "is_autocast_enabled", is_autocast_enabled)


def test_the_check_catches_a_draw_on_another_device() -> None:
    with GeneratorDeviceCheck(), pytest.raises(RuntimeError, match="draws on meta from a cpu"):
        torch.randn(2, generator=torch.Generator(), device=META)


def test_eot_noise_draws_with_a_cpu_generator_for_device_images(no_value_checks: None) -> None:
    images = torch.zeros(2, 3, 8, 8, device=META)
    with GeneratorDeviceCheck():
        out = GaussianNoise(1 / 255)(images, torch.Generator().manual_seed(0))
    assert out.device == META and out.shape == images.shape
    cpu = torch.full((1, 3, 4, 4), 0.5)  # on the CPU the draw is what it always was
    expected = cpu + torch.randn(cpu.shape, generator=torch.Generator().manual_seed(3)) / 255
    out = GaussianNoise(1 / 255)(cpu, torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, expected.clamp(0, 1), rtol=0, atol=0)


@pytest.mark.parametrize("sampler, t_star, steps", [("ddpm", 20, 3), ("ddim", 19, 4)])
@pytest.mark.parametrize("tiled", [False, True])
def test_the_purifier_keeps_everything_on_the_device(
    tmp_path: Path, no_value_checks: None, sampler: str, t_star: int, steps: int, tiled: bool
) -> None:
    model, scheduler_config = load_denoiser(write_tiny_release(tmp_path / "ddpm-v1"), "cpu")
    config = PurifierConfig(
        t_star=t_star,
        steps=steps,
        sampler=sampler,
        spacing="uniform",
        ensemble=2,
        unsharp_amount=0.5,
        precision="float32",
        gate=0.0,
        t_star_max=0,
    )
    purifier = DiffusionPurifier(copy.deepcopy(model).to(META), scheduler_config, config, seed=0)
    images = torch.zeros(2, 3, 40, 36, device=META)
    with GeneratorDeviceCheck():
        out = purifier.tiled(images, 24, 4) if tiled else purifier(images)
    assert out.device == META and out.shape == images.shape


def test_the_metric_scores_images_from_another_device(tmp_path: Path) -> None:
    metric = MetricModel("cpu", write_tiny_standin(tmp_path / "metric")).eval().to(META)
    scores = metric(torch.rand(2, 3, 32, 32))  # CPU images, metric elsewhere
    assert scores.device == META and scores.shape == (2, 1)
