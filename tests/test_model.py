"""The Linearity model: exact p1q2.pth layout, strict loading, score formula, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.image_checks import check_images
from metrics.linearity import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CheckpointError,
    IQAModel,
    TrunkSpec,
    load_iqa_model,
)
from model import MetricModel
from scripts.convert_checkpoint import convert
from tests.conftest import P1Q2_B, P1Q2_K


@pytest.fixture(scope="module")
def linearity_state() -> dict[str, torch.Tensor]:
    return IQAModel().state_dict()


def test_state_dict_has_the_672_p1q2_keys(linearity_state: dict) -> None:
    assert len(linearity_state) == 672
    expected_counts = {"features": 624, "dr6": 21, "dr7": 21, "regr6": 2, "regr7": 2}
    for prefix, count in expected_counts.items():
        assert sum(k.startswith(prefix + ".") for k in linearity_state) == count
    assert [k for k in linearity_state if k.startswith("regression")] == [
        "regression.weight",
        "regression.bias",
    ]


@pytest.mark.parametrize(
    ("key", "shape"),
    [
        ("features.0.weight", (64, 3, 7, 7)),
        ("features.1.num_batches_tracked", ()),
        ("features.4.0.conv1.weight", (256, 64, 1, 1)),
        ("features.4.0.conv2.weight", (256, 8, 3, 3)),
        ("features.4.0.downsample.0.weight", (256, 64, 1, 1)),
        ("features.4.0.downsample.1.running_var", (256,)),
        ("features.5.0.conv2.weight", (512, 16, 3, 3)),
        ("features.5.3.bn3.weight", (512,)),
        ("features.6.22.conv3.weight", (1024, 1024, 1, 1)),
        ("features.7.0.downsample.0.weight", (2048, 1024, 1, 1)),
        ("features.7.2.bn3.running_mean", (2048,)),
        ("dr6.0.weight", (1024, 1024)),
        ("dr7.0.weight", (1024, 2048)),
        ("dr6.5.num_batches_tracked", ()),
        ("dr7.4.weight", (64, 256)),
        ("regr6.weight", (1, 64)),
        ("regression.weight", (1, 128)),
    ],
)
def test_key_shapes_match_torchvision_resnext101_32x8d(
    linearity_state: dict, key: str, shape: tuple
) -> None:
    assert tuple(linearity_state[key].shape) == shape


def test_block_counts_and_absent_keys(linearity_state: dict) -> None:
    for stage, n in zip((4, 5, 6, 7), (3, 4, 23, 3), strict=True):
        assert f"features.{stage}.{n - 1}.conv1.weight" in linearity_state
        assert f"features.{stage}.{n}.conv1.weight" not in linearity_state
        assert f"features.{stage}.1.downsample.0.weight" not in linearity_state


def test_metric_model_loads_p1q2_strictly_and_applies_the_score_formula(
    p1q2_checkpoint: Path,
) -> None:
    metric = MetricModel("cpu", p1q2_checkpoint)
    assert metric.k == P1Q2_K and metric.b == P1Q2_B
    assert metric.lower_better is False and not metric.model.training
    images = torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(1))
    score = metric(images)
    assert score.shape == (2, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    raw = metric.model((images - mean) / std)[-1]
    torch.testing.assert_close(score, raw * P1Q2_K[0] + P1Q2_B[0])
    reference = IQAModel().eval()
    reference.load_state_dict(torch.load(p1q2_checkpoint, weights_only=True)["model"])
    torch.testing.assert_close(reference((images - mean) / std)[-1], raw)


def test_metric_is_differentiable_and_takes_any_size(p1q2_checkpoint: Path) -> None:
    metric = MetricModel("cpu", p1q2_checkpoint)
    images = torch.rand(1, 3, 33, 45, requires_grad=True)
    metric(images).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in metric.parameters())


def test_dataparallel_prefix_is_accepted(p1q2_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = torch.load(p1q2_checkpoint, weights_only=True)
    ckpt["model"] = {"module." + k: v for k, v in ckpt["model"].items()}
    path = tmp_path / "prefixed.pth"
    torch.save(ckpt, path)
    model, k, b = load_iqa_model(path, "cpu")
    assert len(model.state_dict()) == 672 and k == P1Q2_K and b == P1Q2_B


def test_missing_checkpoint_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found.*nothere.pth"):
        MetricModel("cpu", tmp_path / "nothere.pth")


def test_corrupt_checkpoint_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(
        CheckpointError, match=r"corrupt.pth \(corrupt, or not a torch checkpoint\)"
    ):
        MetricModel("cpu", path)


def test_mismatched_keys_are_listed(p1q2_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = torch.load(p1q2_checkpoint, weights_only=True)
    del ckpt["model"]["regression.bias"]
    ckpt["model"]["extra.weight"] = torch.zeros(1)
    path = tmp_path / "mismatch.pth"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"mismatch.pth.*regression\.bias.*extra\.weight"):
        MetricModel("cpu", path)


def test_wrong_shape_is_reported(p1q2_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = torch.load(p1q2_checkpoint, weights_only=True)
    ckpt["model"]["regression.weight"] = torch.zeros(1, 64)
    path = tmp_path / "shape.pth"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"regression\.weight: \(1, 64\) vs \(1, 128\)"):
        MetricModel("cpu", path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"model": {}, "k": [1.0]}, "must hold a dict with 'model', 'k' and 'b'"),
        ([1, 2, 3], "must hold a dict"),
        ({"model": {}, "k": "abc", "b": [0.0]}, "does not match IQAModel"),
    ],
)
def test_malformed_checkpoints(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "bad.pth"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=message):
        load_iqa_model(path, "cpu")


def test_bad_k_is_reported(p1q2_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = torch.load(p1q2_checkpoint, weights_only=True)
    ckpt["k"] = "abc"
    path = tmp_path / "badk.pth"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="'k' must be a list of numbers"):
        load_iqa_model(path, "cpu")


def test_pickled_checkpoint_is_refused_and_convertible(
    p1q2_checkpoint: Path, tmp_path: Path
) -> None:
    ckpt = torch.load(p1q2_checkpoint, weights_only=True)
    ckpt["k"] = np.array(P1Q2_K, dtype=np.float64)
    ckpt["b"] = np.array(P1Q2_B, dtype=np.float64)
    pickled = tmp_path / "pickled.pth"
    torch.save(ckpt, pickled)
    with pytest.raises(CheckpointError, match="convert_checkpoint.py"):
        load_iqa_model(pickled, "cpu")
    converted = tmp_path / "converted.pth"
    convert(pickled, converted)
    _, k, b = load_iqa_model(converted, "cpu")
    assert k == P1Q2_K and b == P1Q2_B
    with pytest.raises(ValueError, match="refusing to overwrite"):
        convert(pickled, converted)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((1, 3, 8, 8), dtype=np.float32), "must be a torch.Tensor"),
        (torch.zeros(3, 8, 8), r"shape \(B, 3, H, W\)"),
        (torch.zeros(1, 1, 8, 8), r"shape \(B, 3, H, W\)"),
        (torch.zeros(1, 4, 8, 8), r"shape \(B, 3, H, W\)"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "float tensor"),
        (torch.zeros(0, 3, 8, 8), "empty"),
        (torch.full((1, 3, 8, 8), float("nan")), "NaN or Inf"),
        (torch.full((1, 3, 8, 8), float("inf")), "NaN or Inf"),
        (torch.full((1, 3, 8, 8), 1.5), r"\[0, 1\]"),
        (torch.full((1, 3, 8, 8), -0.2), r"\[0, 1\]"),
    ],
)
def test_check_images_rejects_bad_input(images: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_images(images)


def test_metric_rejects_bad_input(p1q2_checkpoint: Path) -> None:
    metric = MetricModel("cpu", p1q2_checkpoint)
    with pytest.raises(ValueError, match=r"image must lie in \[0, 1\]"):
        metric(torch.full((1, 3, 16, 16), 2.0))


def test_a_folder_path_loads_a_saved_standin(tmp_path: Path) -> None:
    from metrics.standin import save_standin

    spec = TrunkSpec((1, 1, 1, 1), groups=2, width_per_group=16, stem_width=8)
    tiny = IQAModel(spec).eval()
    folder = save_standin(tiny, [2.0, 1.0, 1.0], [5.0, 0.0, 0.0], tmp_path / "standin-test")
    metric = MetricModel("cpu", folder)
    images = torch.rand(2, 3, 40, 36, generator=torch.Generator().manual_seed(3))
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(metric(images), tiny((images - mean) / std)[-1] * 2.0 + 5.0)
    assert metric.name == "standin-test"


def test_default_without_p1q2_or_standin_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import model
    from metrics import standin as standin_metric

    monkeypatch.setattr(model, "ROOT", tmp_path)
    monkeypatch.setattr(standin_metric, "STANDIN_DIR", tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="missing.*train_metric.py"):
        MetricModel("cpu")


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"blocks": (1, 1, 1)}, "four integers"),
        ({"blocks": (1, 0, 1, 1)}, "four integers"),
        ({"blocks": (1, 1, 1, 1), "groups": 0}, "must be >= 1"),
        ({"blocks": (1, 1, 1, 1), "stem_width": 4}, "4 x 8"),
    ],
)
def test_trunk_spec_refuses_a_trunk_it_cannot_build(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrunkSpec(**fields)


def test_unpicklable_checkpoint_is_reported_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "garbled.pth"
    path.write_bytes(b"\x80\x02\xff")  # pickle protocol 2, then an opcode that does not exist
    with pytest.raises(CheckpointError, match=r"garbled\.pth: corrupt file"):
        load_iqa_model(path, "cpu")


def test_empty_k_is_reported(p1q2_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = torch.load(p1q2_checkpoint, weights_only=True)
    ckpt["k"] = []
    path = tmp_path / "emptyk.pth"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="'k' is empty"):
        load_iqa_model(path, "cpu")


def test_model_entry_that_is_not_a_state_dict_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "listmodel.pth"
    torch.save({"model": [1.0, 2.0], "k": list(P1Q2_K), "b": list(P1Q2_B)}, path)
    with pytest.raises(CheckpointError, match="'model' must be a state dict, got list"):
        load_iqa_model(path, "cpu")
