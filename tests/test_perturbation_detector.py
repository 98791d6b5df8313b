"""The perturbation detector and the gate it drives in the purifier, ``Defense`` and ``purify``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import defense as defense_module
from common.image_io import save_image
from common.weights_manifest import WeightsIntegrityError, write_manifest
from defense import Defense
from purifier import (
    DiffusionPurifier,
    MissingDetectorError,
    PerturbationDetector,
    PurifierConfig,
    load_detector,
    newest_detector,
    resolve_detector,
)
from purifier import cli as purify_cli
from purifier.perturbation_detector import high_pass, save_detector
from tests.conftest import write_tiny_release

KNOBS = {"t_star": 20, "steps": 2, "sampler": "ddpm", "ensemble": 1}


def tiny_detector(seed: int = 0) -> PerturbationDetector:
    torch.manual_seed(seed)
    return PerturbationDetector((4, 4, 4, 4)).eval()


class FixedStrengths(nn.Module):
    """A detector stand-in: ``estimate`` returns the given strengths and counts its calls."""

    def __init__(self, strengths: list[float]) -> None:
        super().__init__()
        self.strengths = torch.tensor(strengths)
        self.calls = 0

    def estimate(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.strengths[: images.shape[0]]


@pytest.fixture(scope="module")
def detector_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<tmp>/weights/detector-v1`` holding ``tiny_detector()``."""
    folder = tmp_path_factory.mktemp("weights") / "detector-v1"
    return save_detector(tiny_detector(), folder, "detector-v1", training={"note": "test"})


def images(batch: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --- the network ------------------------------------------------------------------------------


def test_high_pass_of_a_constant_image_is_zero() -> None:
    assert torch.equal(high_pass(torch.full((1, 3, 5, 7), 0.5)), torch.zeros(1, 3, 5, 7))


def test_detector_gives_one_non_negative_strength_per_image() -> None:
    out = tiny_detector()(images(3, 17))
    assert out.shape == (3,) and bool((out >= 0).all())


def test_detector_is_differentiable() -> None:
    x = images(1, 16).requires_grad_(True)
    tiny_detector()(x).sum().backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)


@pytest.mark.parametrize("widths", [(4, 4, 4), (4, 0, 4, 4)])
def test_bad_widths_are_refused(widths: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="widths"):
        PerturbationDetector(widths)


def test_estimate_of_a_small_image_is_forward() -> None:
    model, x = tiny_detector(), images(2, 24)
    assert torch.equal(model.estimate(x), model(x))


def test_estimate_in_tiles_adds_the_pooled_statistics() -> None:
    model, x = tiny_detector(), images(1, 64)
    total = squares = 0
    count = 0
    for top in (0, 32):
        for left in (0, 32):
            part = model.pooled_sums(x[..., top : top + 32, left : left + 32])
            total, squares, count = total + part[0], squares + part[1], count + part[2]
    expected = model.head_from_sums(total, squares, count)
    torch.testing.assert_close(model.estimate(x, tile=32), expected)
    # tile borders change a few positions only: close to the one-pass value
    torch.testing.assert_close(model.estimate(x, tile=32), model(x), rtol=0.1, atol=0.05)


def test_estimate_refuses_bad_images_and_tiles() -> None:
    model = tiny_detector()
    with pytest.raises(ValueError, match="tile"):
        model.estimate(images(1, 16), tile=4)
    with pytest.raises(ValueError):
        model.estimate(torch.rand(3, 16, 16))
    with pytest.raises(ValueError):
        model.estimate(images(1, 16) * 2)


# --- weights folders --------------------------------------------------------------------------


def test_saved_detector_loads_back_frozen_with_the_same_output(detector_folder: Path) -> None:
    loaded = load_detector(detector_folder)
    x = images(2, 16)
    assert torch.equal(loaded(x), tiny_detector()(x))
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    manifest = json.loads((detector_folder / "manifest.json").read_text())
    assert manifest["training"] == {"note": "test"}


def test_a_released_detector_is_never_overwritten(detector_folder: Path) -> None:
    with pytest.raises(FileExistsError):
        save_detector(tiny_detector(), detector_folder, "detector-v1")


def test_missing_detector_names_the_training_command(tmp_path: Path) -> None:
    with pytest.raises(MissingDetectorError, match="train_detector.py"):
        load_detector(tmp_path / "detector-v9")
    with pytest.raises(MissingDetectorError, match="gate=0"):
        newest_detector(tmp_path)


def test_altered_detector_weights_are_refused(detector_folder: Path, tmp_path: Path) -> None:
    copy = tmp_path / "detector-v1"
    save_detector(tiny_detector(), copy, "detector-v1")
    (copy / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(WeightsIntegrityError):
        load_detector(copy)


def test_newest_detector_takes_the_highest_released_version(tmp_path: Path) -> None:
    for version in (1, 10, 2):
        save_detector(tiny_detector(), tmp_path / f"detector-v{version}", str(version))
    (tmp_path / "detector-v11").mkdir()  # no manifest: not released
    assert newest_detector(tmp_path) == tmp_path / "detector-v10"


# --- the gate ---------------------------------------------------------------------------------


def test_gate_leaves_images_below_it_unchanged_and_purifies_the_rest(tiny_weights: Path) -> None:
    ungated = DiffusionPurifier.from_pretrained(tiny_weights, "cpu", PurifierConfig(**KNOBS))
    detector = FixedStrengths([0.2, 3.0])
    gated = DiffusionPurifier(
        ungated.model,
        dict(ungated.scheduler.config),
        PurifierConfig(**KNOBS, gate=1.0),
        0,
        detector,
    )
    x = images(2, 16)
    out = gated(x)
    assert torch.equal(out[0], x[0])
    assert not torch.equal(out[1], x[1])
    assert torch.equal(gated.flags(x), torch.tensor([False, True]))
    # the purified image is what purify_all gives it alone with the same noise
    reference = DiffusionPurifier(
        ungated.model, dict(ungated.scheduler.config), PurifierConfig(**KNOBS), 0
    )
    assert torch.equal(out[1:], reference(x[1:]))


def test_gate_with_nothing_flagged_returns_a_copy(tiny_weights: Path) -> None:
    base = DiffusionPurifier.from_pretrained(tiny_weights, "cpu", PurifierConfig(**KNOBS))
    gated = DiffusionPurifier(
        base.model, dict(base.scheduler.config), PurifierConfig(**KNOBS, gate=5.0), 0,
        FixedStrengths([0.0, 0.0]),
    )  # fmt: skip
    x = images(2, 16)
    out = gated(x)
    assert torch.equal(out, x) and out is not x


def test_tiled_purification_gates_whole_images(tiny_weights: Path) -> None:
    base = DiffusionPurifier.from_pretrained(tiny_weights, "cpu", PurifierConfig(**KNOBS))
    detector = FixedStrengths([0.0, 9.0])
    gated = DiffusionPurifier(
        base.model, dict(base.scheduler.config), PurifierConfig(**KNOBS, gate=1.0), 0, detector
    )
    x = images(2, 40)
    out = gated.tiled(x, tile=24, overlap=4)
    assert detector.calls == 1  # one decision per image, not per tile
    assert torch.equal(out[0], x[0]) and not torch.equal(out[1], x[1])


def test_gate_needs_a_detector(tiny_weights: Path) -> None:
    base = DiffusionPurifier.from_pretrained(tiny_weights, "cpu", PurifierConfig(**KNOBS))
    with pytest.raises(ValueError, match="detector"):
        DiffusionPurifier(base.model, dict(base.scheduler.config), PurifierConfig(gate=1.0))


def test_gate_zero_ignores_a_given_detector(tiny_weights: Path) -> None:
    base = DiffusionPurifier.from_pretrained(tiny_weights, "cpu", PurifierConfig(**KNOBS))
    purifier = DiffusionPurifier(
        base.model, dict(base.scheduler.config), PurifierConfig(**KNOBS), 0, FixedStrengths([9])
    )
    assert purifier.detector is None


@pytest.mark.parametrize("gate", [-1.0, float("nan"), True, "1"])
def test_bad_gates_are_refused(gate: object) -> None:
    with pytest.raises(ValueError, match="gate"):
        PurifierConfig(gate=gate)


def test_defense_loads_the_detector_beside_the_weights_or_the_one_named(
    tiny_weights: Path, detector_folder: Path, tmp_path: Path
) -> None:
    x = images(2, 20)
    defense = Defense("cpu", weights=tiny_weights, detector=detector_folder, seed=0, gate=0.5)
    out = defense.apply_defense(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    flags = defense.purifier.flags(x)
    assert torch.equal(out[~flags], x[~flags])
    beside = Defense("cpu", weights=tiny_weights, gate=0.5)  # conftest's flag-all detector
    assert bool(beside.purifier.flags(x).all())


def test_defense_falls_back_to_the_shipped_detector(
    tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a fine-tuned folder outside weights/ with no detector beside it: the shipped one is used
    alone = write_tiny_release(tmp_path / "runs" / "ddpm-mine")
    monkeypatch.setattr(defense_module, "WEIGHTS_DIR", tiny_weights.parent)
    assert resolve_detector(None, alone, tiny_weights.parent) == tiny_weights.parent / "detector-v1"
    fallback = Defense("cpu", weights=alone, gate=0.5)
    assert bool(fallback.purifier.flags(images(2, 20)).all())  # the flag-all detector
    monkeypatch.setattr(purify_cli, "WEIGHTS_DIR", tiny_weights.parent)  # purify: the same
    save_image(images(1, 8)[0], tmp_path / "in" / "a.png")
    argv = [str(tmp_path / "in"), str(tmp_path / "out"), "--weights", str(alone), "--gate", "1"]
    assert purify_cli.main(argv) == 0
    assert resolve_detector("named", alone, tiny_weights.parent) == Path("named")
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(defense_module, "WEIGHTS_DIR", empty)
    with pytest.raises(MissingDetectorError, match="train_detector.py"):
        Defense("cpu", weights=alone, gate=0.5)  # none beside, none shipped
    shipped = write_tiny_release(empty / "ddpm-v1")
    with pytest.raises(MissingDetectorError):
        resolve_detector(None, shipped, empty)  # beside is the shipped folder: no second search
    Defense("cpu", weights=alone, gate=0.0, t_star_max=0)  # knobs without a detector: not needed


def test_defense_gate_under_no_grad_and_with_gradients(
    tiny_weights: Path, detector_folder: Path
) -> None:
    defense = Defense("cpu", weights=tiny_weights, detector=detector_folder, seed=0, gate=1e-6)
    x = images(1, 16).requires_grad_(True)
    defense.apply_defense(x).sum().backward()  # flagged (any strength > 1e-6): differentiable
    assert x.grad is not None
    with torch.no_grad():
        assert defense.apply_defense(x).shape == x.shape


def test_purify_cli_reports_a_missing_detector(
    tiny_weights: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    save_image(images(1, 8)[0], tmp_path / "in" / "a.png")
    alone = write_tiny_release(tmp_path / "weights" / "ddpm-v1")  # no detector beside it
    monkeypatch.setattr(purify_cli, "WEIGHTS_DIR", tmp_path / "weights")  # nor a shipped one
    argv = [str(tmp_path / "in"), str(tmp_path / "out"), "--weights", str(alone)]
    assert purify_cli.main([*argv, "--gate", "1"]) == 2
    assert "no released detector" in caplog.text
    caplog.clear()
    ramp = ["--gate", "0", "--t-star", "20", "--t-star-max", "40"]
    assert purify_cli.main([*argv, *ramp]) == 2  # the noise-level ramp needs it too
    assert "no released detector" in caplog.text and "t_star_max=0" in caplog.text
    assert purify_cli.main([*argv, "--gate", "0", "--t-star-max", "0"]) == 0
    named = ["--detector", str(tiny_weights.parent / "detector-v1")]
    assert purify_cli.main([*argv, "--gate", "1", *named, "--overwrite"]) == 0


def _copy_detector(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


@pytest.mark.parametrize(
    "name, content",
    [
        ("detector.json", b"{not json"),
        ("detector.json", b'{"output": "no widths"}'),
        ("model.safetensors", b"not a safetensors file"),
    ],
    ids=["bad-json", "no-widths", "bad-weights"],
)
def test_unloadable_detector_files_are_refused(
    detector_folder: Path, tmp_path: Path, name: str, content: bytes
) -> None:
    folder = _copy_detector(detector_folder, tmp_path / "detector-v1")
    assert (folder / name).is_file()
    (folder / name).write_bytes(content)
    write_manifest(folder, "perturbation-detector", "1")  # the content is wrong, not the hash
    with pytest.raises(ValueError, match="cannot load the detector in"):
        load_detector(folder)


def test_detector_weights_of_other_widths_do_not_fit(detector_folder: Path, tmp_path: Path) -> None:
    folder = _copy_detector(detector_folder, tmp_path / "detector-v1")
    config = json.loads((folder / "detector.json").read_text())
    config["widths"] = [2, 2, 2, 2]  # the weights are for (4, 4, 4, 4)
    (folder / "detector.json").write_text(json.dumps(config))
    write_manifest(folder, "perturbation-detector", "1")
    with pytest.raises(ValueError, match=r"model\.safetensors does not fit the detector"):
        load_detector(folder)
