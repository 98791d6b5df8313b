"""Stand-in metric: weights folder round trip and integrity, losses, distortions, data split."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import model as model_module
from common.weights_manifest import WeightsIntegrityError
from metrics import standin as standin_metric
from metrics.clive_data import MosRow, carve_validation, read_mos_csv
from metrics.iqa_losses import linearity_loss, norm_in_norm_loss, ranking_hinge_loss
from metrics.linearity import IMAGENET_MEAN, IMAGENET_STD, IQAModel, TrunkSpec
from metrics.standin import load_standin, save_standin, spec_from_dict, spec_to_dict
from metrics.synthetic_distortions import CLEAN_SOURCE_KINDS, N_LEVELS, distort
from model import MetricModel

TINY = TrunkSpec(blocks=(1, 1, 1, 1), groups=2, width_per_group=16, stem_width=8)
K = [2.5, 1.0, -1.0]
B = [40.0, 3.0, 4.0]


def tiny_model(seed: int = 0) -> IQAModel:
    """A tiny IQAModel with non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    net = IQAModel(TINY)
    gen = torch.Generator().manual_seed(seed)
    for key, value in net.state_dict().items():
        if key.endswith("running_var"):
            value.copy_(torch.rand(value.shape, generator=gen) + 0.5)
        elif key.endswith("running_mean"):
            value.copy_(torch.randn(value.shape, generator=gen) * 0.1)
    return net.eval()


@pytest.fixture()
def standin_folder(tmp_path: Path) -> Path:
    return save_standin(tiny_model(), K, B, tmp_path / "standin", epochs=1, command="test")


def test_roundtrip_gives_identical_outputs(standin_folder: Path) -> None:
    original = tiny_model()
    loaded, k, b = load_standin("cpu", standin_folder)
    assert loaded.spec == TINY and not loaded.training
    assert (k, b) == (K, B)
    x = torch.randn(2, 3, 48, 40, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for a, c in zip(original(x), loaded(x), strict=True):
            assert torch.equal(a, c)
    manifest = json.loads((standin_folder / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.safetensors", "metric.json"}
    assert manifest["training"] == {"epochs": 1, "command": "test"}


def test_save_refuses_to_overwrite_released_folder(standin_folder: Path) -> None:
    with pytest.raises(FileExistsError, match="already holds released weights"):
        save_standin(tiny_model(), K, B, standin_folder)


@pytest.mark.parametrize("bad_k, bad_b", [([], []), ([1.0], [1.0, 2.0])])
def test_save_rejects_bad_calibration(tmp_path: Path, bad_k: list, bad_b: list) -> None:
    with pytest.raises(ValueError, match="k and b"):
        save_standin(tiny_model(), bad_k, bad_b, tmp_path / "x")


def test_tampered_weights_are_refused(standin_folder: Path) -> None:
    path = standin_folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsIntegrityError, match="does not match its manifest"):
        load_standin("cpu", standin_folder)


def test_tampered_config_is_refused(standin_folder: Path) -> None:
    path = standin_folder / "metric.json"
    path.write_text(path.read_text().replace("2.5", "3.5"))
    with pytest.raises(WeightsIntegrityError, match="metric.json"):
        load_standin("cpu", standin_folder)


def test_missing_folder_names_folder_and_command(tmp_path: Path) -> None:
    folder = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        load_standin("cpu", folder)
    assert str(folder) in str(info.value)
    assert "scripts/train_metric.py" in str(info.value)


def test_weights_that_do_not_fit_the_spec_are_refused(tmp_path: Path) -> None:
    folder = save_standin(tiny_model(), K, B, tmp_path / "a")
    config = json.loads((folder / "metric.json").read_text())
    config["spec"]["stem_width"] = 16
    other = tmp_path / "b"
    other.mkdir()
    (other / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    (other / "metric.json").write_text(json.dumps(config))
    standin_metric.write_manifest(other, "x", "1")
    with pytest.raises(ValueError, match="does not fit IQAModel"):
        load_standin("cpu", other)


@pytest.mark.parametrize(
    "info",
    [
        {"blocks": [1, 1, 1]},
        {"blocks": [1, 1, 1, 0], "groups": 2, "width_per_group": 4, "stem_width": 8},
        {"groups": 2},
    ],
)
def test_bad_spec_dicts_raise(info: dict) -> None:
    with pytest.raises(ValueError):
        spec_from_dict(info)


def test_standin_names_keep_v1_legacy_name_and_use_the_folder_otherwise(tmp_path: Path) -> None:
    assert standin_metric.standin_name(standin_metric.STANDIN_V1_DIR) == "standin"
    assert standin_metric.standin_name(tmp_path / "standin-metric-v2") == "standin-metric-v2"


def test_spec_dict_roundtrip() -> None:
    assert spec_from_dict(spec_to_dict(TINY)) == TINY


def test_metric_model_scores_with_standin_and_passes_gradients(
    standin_folder: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(standin_metric, "STANDIN_DIR", standin_folder)
    monkeypatch.setattr(model_module, "default_checkpoint", lambda: tmp_path / "absent.pth")
    metric = MetricModel("cpu")
    assert metric.name == standin_folder.name == "standin"
    image = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(2))
    image.requires_grad_(True)
    score = metric(image)
    assert score.shape == (2, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = tiny_model()((image - mean) / std)[-1] * K[0] + B[0]
    torch.testing.assert_close(score.detach(), expected)
    score.sum().backward()
    assert image.grad is not None and torch.isfinite(image.grad).all()
    assert image.grad.abs().sum() > 0


# --- losses ---------------------------------------------------------------------------------


def test_norm_in_norm_p1_q2_hand_computed() -> None:
    # centred/normalised pred [1, -1, 0]/sqrt2, target [-1, 0, 1]/sqrt2: L1 of the difference
    # is 2*sqrt2, the scale 2 * 3**(1 - 1/2) = 2*sqrt3, so the loss is sqrt(2/3).
    loss = norm_in_norm_loss(torch.tensor([3.0, 1.0, 2.0]), torch.tensor([1.0, 2.0, 3.0]))
    assert abs(loss.item() - math.sqrt(2 / 3)) < 1e-6


def test_norm_in_norm_p2_q2_is_half_one_minus_plcc() -> None:
    pred, target = torch.tensor([[3.0], [1.0], [2.0]]), torch.tensor([1.0, 2.0, 3.0])
    assert abs(norm_in_norm_loss(pred, target, p=2, q=2).item() - 0.75) < 1e-6


@pytest.mark.parametrize("scale, shift", [(1.0, 0.0), (0.01, 5.0), (37.0, -100.0)])
def test_norm_in_norm_invariant_to_positive_affine_maps(scale: float, shift: float) -> None:
    gen = torch.Generator().manual_seed(3)
    pred, target = torch.randn(16, generator=gen), torch.rand(16, generator=gen) * 100
    base = norm_in_norm_loss(pred, target)
    moved = norm_in_norm_loss(pred * scale + shift, target)
    assert abs(base.item() - moved.item()) < 1e-5


def test_norm_in_norm_perfect_and_reversed() -> None:
    target = torch.tensor([1.0, 4.0, 2.0, 8.0])
    assert norm_in_norm_loss(target * 3 + 1, target).item() < 1e-6
    assert norm_in_norm_loss(-target, target).item() > 0.5


@pytest.mark.parametrize(
    "pred, target, match",
    [
        (torch.ones(1), torch.ones(1), "at least 2"),
        (torch.ones(3), torch.ones(4), "entries"),
        (torch.ones(3, 2), torch.ones(3), "shape"),
    ],
)
def test_norm_in_norm_bad_input(pred: torch.Tensor, target: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        norm_in_norm_loss(pred, target)


def test_linearity_loss_weights_the_three_outputs() -> None:
    target = torch.tensor([1.0, 2.0, 3.0])
    good, bad = target[:, None], torch.tensor([[3.0], [1.0], [2.0]])
    loss = linearity_loss([bad, good, bad], target)
    assert abs(loss.item() - 1.1 * math.sqrt(2 / 3)) < 1e-6
    with pytest.raises(ValueError, match="weights"):
        linearity_loss([good, good], target)


def test_ranking_hinge_loss_pinned() -> None:
    better, worse = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    # differences / spread 2: [0.5, -0.5]; relu(0.6 - d) = [0.1, 1.1]; mean 0.6
    assert abs(ranking_hinge_loss(better, worse, 2.0, 0.6).item() - 0.6) < 1e-6
    with pytest.raises(ValueError, match="spread"):
        ranking_hinge_loss(better, worse, 0.0, 0.5)


# --- synthetic distortions ------------------------------------------------------------------


@pytest.mark.parametrize("kind", CLEAN_SOURCE_KINDS)
def test_distortions_keep_shape_range_and_change_the_image(kind: str) -> None:
    image = torch.rand(3, 32, 40, generator=torch.Generator().manual_seed(4))
    out = distort(image, kind, N_LEVELS - 1, torch.Generator().manual_seed(5))
    assert out.shape == image.shape and out.dtype == image.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert (out - image).abs().mean() > 0.01


def test_stronger_blur_removes_more_detail() -> None:
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(6))
    energy = [distort(image, "blur", lv).diff(dim=-1).abs().mean().item() for lv in (0, 4)]
    assert energy[0] > energy[1]


def test_distort_bad_input() -> None:
    image = torch.rand(3, 16, 16)
    with pytest.raises(ValueError, match="level"):
        distort(image, "blur", N_LEVELS)
    with pytest.raises(ValueError, match="unknown distortion"):
        distort(image, "sepia", 0)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        distort(image[None], "blur", 0)


# --- CLIVE labels and the validation carve-out -----------------------------------------------


def _rows(n: int) -> list[MosRow]:
    return [MosRow(Path(f"{i}.jpg"), float(i), 1.0, "train") for i in range(n)]


def test_carve_validation_is_fixed_disjoint_and_order_free() -> None:
    rows = _rows(40)
    fit, val = carve_validation(rows, 0.25, seed=0)
    fit2, val2 = carve_validation(list(reversed(rows)), 0.25, seed=0)
    assert len(val) == 10 and len(fit) == 30
    assert {r.path for r in val} == {r.path for r in val2}
    assert not {r.path for r in val} & {r.path for r in fit}
    assert {r.path for r in carve_validation(rows, 0.25, seed=1)[1]} != {r.path for r in val}


def test_carve_validation_rejects_test_rows_and_bad_fraction() -> None:
    with pytest.raises(ValueError, match="train split only"):
        carve_validation([MosRow(Path("a.jpg"), 1.0, 1.0, "test"), *_rows(3)], 0.5)
    with pytest.raises(ValueError, match="fraction"):
        carve_validation(_rows(3), 1.0)


def test_read_mos_csv(tmp_path: Path) -> None:
    (tmp_path / "clive").mkdir()
    (tmp_path / "clive" / "mos.csv").write_text(
        "image,mos,mos_std,split\na.jpg,50.5,10,train\nb.jpg,20,5,test\n"
    )
    rows = read_mos_csv(tmp_path)
    assert [r.split for r in rows] == ["train", "test"]
    assert read_mos_csv(tmp_path, "test")[0].mos == 20.0
    assert read_mos_csv(tmp_path, "train")[0].path == tmp_path / "clive" / "images" / "a.jpg"
    with pytest.raises(ValueError, match="split"):
        read_mos_csv(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="--data"):
        read_mos_csv(tmp_path / "missing")


# --- training-script helpers ----------------------------------------------------------------


def test_schedule_lr_warms_up_then_decays_to_one_percent() -> None:
    from training.metric import schedule_lr

    assert schedule_lr(1.0, 0.0, 0.1) == pytest.approx(0.02)
    assert schedule_lr(1.0, 0.05, 0.1) == pytest.approx(0.5)
    assert schedule_lr(1.0, 0.1, 0.1) == pytest.approx(1.0)
    assert schedule_lr(1.0, 0.55, 0.1) == pytest.approx(0.505)
    assert schedule_lr(1.0, 1.0, 0.1) == pytest.approx(0.01)
    assert schedule_lr(1.0, 2.0, 0.1) == pytest.approx(0.01)


def test_random_crop_is_seeded_and_in_range() -> None:
    from training.metric import random_crop

    image = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    a = random_crop(image, 8, torch.Generator().manual_seed(0))
    b = random_crop(image, 8, torch.Generator().manual_seed(0))
    assert a.shape == (3, 8, 8) and torch.equal(a, b)
    assert a.dtype == torch.float32 and a.min() >= 0 and a.max() <= 1


def test_eval_metric_names_missing_data_without_a_traceback(tmp_path: Path) -> None:
    from evaluation import metric_eval as eval_metric

    with pytest.raises(SystemExit, match=r"^eval_metric\.py: error: .*mos\.csv"):
        eval_metric.main(["--data", str(tmp_path), "--threads", "1", "--skip-speed"])


def _rewrite_config(folder: Path, text: str) -> None:
    """Replace ``metric.json`` and re-hash the manifest, so only the content is wrong."""
    (folder / "metric.json").write_text(text)
    standin_metric.write_manifest(folder, "standin-metric", "1")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: "{not json", r"metric\.json is not valid JSON"),
        (lambda c: "[1, 2]", r"metric\.json must hold an object with 'spec', 'k' and 'b'"),
        (lambda c: json.dumps({"k": c["k"], "b": c["b"]}), "must hold an object with 'spec'"),
        (lambda c: json.dumps({**c, "spec": {"groups": 2}}), "bad trunk spec"),
        (lambda c: json.dumps({**c, "k": []}), "'k' must be a non-empty list of numbers"),
        (lambda c: json.dumps({**c, "b": 40.0}), "'b' must be a non-empty list of numbers"),
        (lambda c: json.dumps({**c, "k": ["high", 1.0]}), "'k' must be numbers"),
    ],
    ids=["bad-json", "a-list", "no-spec", "bad-spec", "empty-k", "b-not-a-list", "k-not-numbers"],
)
def test_bad_metric_json_is_refused(standin_folder: Path, edit, message: str) -> None:
    config = json.loads((standin_folder / "metric.json").read_text())
    _rewrite_config(standin_folder, edit(config))
    with pytest.raises(ValueError, match=message):
        load_standin("cpu", standin_folder)


def test_unreadable_standin_weights_are_refused(standin_folder: Path) -> None:
    (standin_folder / "model.safetensors").write_bytes(b"not a safetensors file")
    standin_metric.write_manifest(standin_folder, "standin-metric", "1")
    with pytest.raises(ValueError, match=r"cannot read .*model\.safetensors"):
        load_standin("cpu", standin_folder)


def test_standin_file_missing_from_the_manifest_names_the_training_command(
    standin_folder: Path,
) -> None:
    path = standin_folder / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["files"]["metric.json"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(FileNotFoundError, match=r"metric\.json \(not in manifest\.json\)"):
        load_standin("cpu", standin_folder)
