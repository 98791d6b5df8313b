"""Label-free trunk pre-training (``scripts/pretrain_metric_trunk.py``) and starting
``scripts/train_metric.py`` from its trunk (``--init-trunk``), on tiny fake data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from common.image_io import save_image
from common.weights_manifest import sha256_file, verify_manifest
from metrics.linearity import IQAModel, TrunkSpec
from metrics.synthetic_distortions import ANY_SOURCE_KINDS, CLEAN_SOURCE_KINDS, N_LEVELS
from training import metric as train_metric
from training import metric_trunk as pretrain

TINY = TrunkSpec(blocks=(1, 1, 1, 1), groups=2, width_per_group=16, stem_width=8)
TINY_FLAGS = ["--blocks", "1", "1", "1", "1", "--groups", "2", "--width-per-group", "16"]
TINY_FLAGS += ["--stem-width", "8"]


def test_distortion_classes_are_pinned_and_cover_every_kind_and_level() -> None:
    assert pretrain.N_CLASSES == 1 + 6 * 5
    assert pretrain.distortion_class("blur", 0) == 1
    assert pretrain.distortion_class("noise", 2) == 8
    assert pretrain.distortion_class("contrast", N_LEVELS - 1) == pretrain.N_CLASSES - 1
    every = {
        pretrain.distortion_class(kind, level)
        for kind in CLEAN_SOURCE_KINDS
        for level in range(N_LEVELS)
    }
    assert every == set(range(1, pretrain.N_CLASSES))
    with pytest.raises(ValueError, match="unknown distortion"):
        pretrain.distortion_class("fog", 0)
    with pytest.raises(ValueError, match="level"):
        pretrain.distortion_class("blur", N_LEVELS)


def test_labelled_crop_is_seeded_and_labels_what_it_did() -> None:
    image = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)
    a = pretrain.labelled_crop(image, ANY_SOURCE_KINDS, 16, 0.0, torch.Generator().manual_seed(4))
    b = pretrain.labelled_crop(image, ANY_SOURCE_KINDS, 16, 0.0, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert a[0].shape == (3, 16, 16) and a[0].min() >= 0 and a[0].max() <= 1
    assert 1 <= a[1] <= len(ANY_SOURCE_KINDS) * N_LEVELS  # contrast is never drawn here
    gen = torch.Generator().manual_seed(0)
    labels = [pretrain.labelled_crop(image, ("blur",), 16, 0.5, gen)[1] for _ in range(40)]
    assert 0 in labels and set(labels) <= {0, 1, 2, 3, 4, 5}
    untouched_gen = torch.Generator().manual_seed(1)
    x, label = pretrain.labelled_crop(image, ("blur",), 16, 0.999, untouched_gen)
    crop = train_metric.random_crop(image, 16, torch.Generator().manual_seed(1))
    assert label == 0 and torch.equal(x, crop)


def test_training_batch_draws_sources_with_their_kinds() -> None:
    sources = [
        (torch.zeros(3, 40, 40, dtype=torch.uint8), ("blur",)),
        (torch.full((3, 40, 40), 200, dtype=torch.uint8), ("contrast",)),
    ]
    x, y = pretrain.training_batch(sources, 12, 16, 0.2, torch.Generator().manual_seed(5))
    again = pretrain.training_batch(sources, 12, 16, 0.2, torch.Generator().manual_seed(5))
    assert x.shape == (12, 3, 16, 16) and y.shape == (12,) and x.dtype == torch.float32
    assert torch.equal(x, again[0]) and torch.equal(y, again[1])
    blur = {pretrain.distortion_class("blur", level) for level in range(N_LEVELS)}
    contrast = {pretrain.distortion_class("contrast", level) for level in range(N_LEVELS)}
    for image, label in zip(x, y.tolist(), strict=True):
        # a flat image stays flat; only the grey source may carry a contrast class
        source_is_black = bool(image.max() == 0)
        assert label in ({0} | (blur if source_is_black else contrast))


def test_classifier_reads_both_pooled_levels() -> None:
    model = pretrain.DistortionClassifier(TINY).eval()
    x = torch.randn(2, 3, 48, 40)
    logits = model(x)
    assert logits.shape == (2, pretrain.N_CLASSES)
    f6, f7 = model.iqa.pooled_features(x)
    assert model.classifier.in_features == f6.shape[1] + f7.shape[1]


def test_load_trunk_copies_only_the_trunk_and_rejects_a_mismatch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = IQAModel(TINY)
    path = tmp_path / "trunk.safetensors"
    save_file({f"features.{k}": v for k, v in source.features.state_dict().items()}, path)
    torch.manual_seed(1)
    target = IQAModel(TINY)
    heads_before = {k: v.clone() for k, v in target.state_dict().items() if "features" not in k}
    train_metric.load_trunk(target, path)
    for key, value in source.features.state_dict().items():
        torch.testing.assert_close(target.features.state_dict()[key], value, rtol=0, atol=0)
    for key, value in heads_before.items():
        torch.testing.assert_close(target.state_dict()[key], value, rtol=0, atol=0)

    wider = IQAModel(TrunkSpec(blocks=(1, 1, 1, 1), groups=2, width_per_group=32, stem_width=8))
    with pytest.raises(ValueError, match="the trunk needs"):
        train_metric.load_trunk(wider, path)
    deeper = IQAModel(TrunkSpec(blocks=(2, 1, 1, 1), groups=2, width_per_group=16, stem_width=8))
    with pytest.raises(ValueError, match="does not hold this trunk"):
        train_metric.load_trunk(deeper, path)
    with pytest.raises(ValueError, match="does not exist"):
        train_metric.load_trunk(target, tmp_path / "missing.safetensors")
    pickle = tmp_path / "trunk.pth"
    torch.save(source.features.state_dict(), pickle)
    with pytest.raises(ValueError, match="trunk.pth is not a safetensors file"):
        train_metric.load_trunk(target, pickle)


@pytest.fixture()
def tiny_data(tmp_path: Path) -> Path:
    """``clive/`` with 20 train + 2 test images and MOS, and ``clean/train`` with 3 images."""
    gen = torch.Generator().manual_seed(0)
    root = tmp_path / "data"
    (root / "clive" / "images").mkdir(parents=True)
    (root / "clean" / "train").mkdir(parents=True)
    lines = ["image,mos,mos_std,split"]
    for i in range(22):
        save_image(torch.rand(3, 48, 56, generator=gen), root / "clive" / "images" / f"{i}.png")
        lines.append(f"{i}.png,{10 + 4 * i},5,{'test' if i >= 20 else 'train'}")
    (root / "clive" / "mos.csv").write_text("\n".join(lines) + "\n")
    for i in range(3):
        save_image(torch.rand(3, 40, 40, generator=gen), root / "clean" / "train" / f"c{i}.png")
    return root


def test_pretrain_then_train_metric_from_the_trunk(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "pretrain"
    common = ["--data", str(tiny_data), *TINY_FLAGS, "--crop", "32"]
    flags = ["--run-dir", str(run), "--max-steps", "3", "--epoch-steps", "2"]
    assert pretrain.main([*common, *flags, "--batch-size", "4", "--eval-crops", "4"]) == 0
    info = json.loads((run / pretrain.INFO_FILE).read_text())
    assert info["steps"] == 3 and [h["step"] for h in info["history"]] == [2, 3]
    assert 0 <= info["ema_held_out_accuracy"] <= 1
    assert info["data"] == {
        "clive_fit_images": 17,  # 20 train images minus the 3 carved out for validation
        "clean_images": 3,
        "clean_dir": str(tiny_data / "clean" / "train"),
        "val_seed": 0,
        "mos_read": False,
    }
    trunk = load_file(run / pretrain.TRUNK_FILE)
    assert set(trunk) == {f"features.{k}" for k in IQAModel(TINY).features.state_dict()}
    finished = (run / pretrain.TRUNK_FILE).read_bytes()
    with pytest.raises(SystemExit, match="exists: a finished run; pick a new --run-dir"):
        pretrain.main([*common, *flags, "--batch-size", "4", "--eval-crops", "4"])
    assert (run / pretrain.TRUNK_FILE).read_bytes() == finished  # a rerun never replaces it

    out = tmp_path / "metric"
    args = [*common, "--init-trunk", str(run / pretrain.TRUNK_FILE), "--epochs", "1"]
    args += ["--batch-size", "4", "--output", str(out), "--run-dir", str(tmp_path / "metric-run")]
    assert train_metric.main([*args, "--trunk-lr-scale", "0.25"]) == 0
    verify_manifest(out)
    again = [*common, "--epochs", "1", "--output", str(out), "--run-dir", str(tmp_path / "again")]
    with pytest.raises(SystemExit, match="already holds released weights"):
        train_metric.main(again)
    assert not (tmp_path / "again").exists()  # refused before the run wrote anything
    manifest = json.loads((out / "manifest.json").read_text())
    init_trunk = manifest["training"]["data"]["init_trunk"]
    assert init_trunk["file"] == str(run / pretrain.TRUNK_FILE)
    assert init_trunk["sha256"] == sha256_file(run / pretrain.TRUNK_FILE)
    # the pre-training's record travels with the metric, its per-epoch history left out
    assert init_trunk["pretraining"] == {k: v for k, v in info.items() if k != "history"}
    assert manifest["training"]["hyperparameters"]["trunk_lr_scale"] == 0.25


def test_train_metric_names_a_batch_larger_than_the_fit_set(
    tiny_data: Path, tmp_path: Path
) -> None:
    argv = ["--data", str(tiny_data), *TINY_FLAGS, "--crop", "32", "--batch-size", "64"]
    argv += ["--output", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    with pytest.raises(ValueError, match=r"17 fit images make no batch of 64 .*--batch-size"):
        train_metric.main(argv)
    assert not (tmp_path / "out").exists()


def test_trunk_provenance_without_pretraining_record(tmp_path: Path) -> None:
    """A trunk file with no ``trunk.json`` beside it is recorded by name and hash alone."""
    path = tmp_path / "my-trunk.safetensors"
    save_file({"features.w": torch.zeros(2)}, path)
    assert train_metric.trunk_provenance(path) == {
        "file": str(path),
        "sha256": sha256_file(path),
    }


def test_parameter_groups_split_trunk_from_heads() -> None:
    model = IQAModel(TINY)
    trunk_group, head_group = train_metric.parameter_groups(model, 0.25)
    names = {id(p): n for n, p in model.named_parameters()}
    assert trunk_group["lr_scale"] == 0.25 and head_group["lr_scale"] == 1.0
    assert all(names[id(p)].startswith("features.") for p in trunk_group["params"])
    assert not any(names[id(p)].startswith("features.") for p in head_group["params"])
    assert len(trunk_group["params"]) + len(head_group["params"]) == len(names)
    assert head_group["params"]  # the dr / regression heads


@pytest.mark.parametrize(
    "extra",
    [
        ["--batch-size", "0"],
        ["--checkpoint-every", "0"],
        ["--crop", "0"],
        ["--epochs", "0"],
        ["--max-minutes", "0"],
        ["--val-fraction", "0"],
        ["--train-limit", "-1"],
        ["--stem-width", "4"],
        ["--blocks", "1", "0", "1", "1"],
    ],
)
def test_train_metric_refuses_counts_it_cannot_run(
    extra: list[str], capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as info:
        train_metric.parse_args(extra)
    assert info.value.code == 2 and extra[0] in capsys.readouterr().err


@pytest.mark.parametrize("scale", ["0", "-0.5", "1.5"])
def test_train_metric_rejects_a_bad_trunk_lr_scale(
    scale: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit):
        train_metric.parse_args(["--trunk-lr-scale", scale])
    assert "--trunk-lr-scale" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--untouched", "1"], "--untouched"),
        (["--crop", "0"], "--crop"),
        (["--epoch-steps", "0"], "--epoch-steps"),
        (["--bn-batches", "0"], "--bn-batches"),
        (["--stem-width", "4"], "the first stage would have no channels"),
        (["--groups", "0"], "--groups"),
    ],
)
def test_pretrain_rejects_bad_options(
    extra: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit):
        pretrain.parse_args(["--run-dir", "x", *extra])
    assert message in capsys.readouterr().err


def test_train_metric_reports_a_trunk_of_another_spec(
    tiny_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "trunk.safetensors"
    save_file({"features.0.weight": torch.zeros(1)}, path)
    args = ["--data", str(tiny_data), *TINY_FLAGS, "--crop", "32", "--init-trunk", str(path)]
    args += ["--epochs", "1", "--output", str(tmp_path / "m"), "--run-dir", str(tmp_path / "r")]
    assert train_metric.main(args) == 2
    assert "does not hold this trunk" in caplog.text
    assert not (tmp_path / "m").exists()
