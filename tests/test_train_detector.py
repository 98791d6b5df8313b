"""scripts/train_detector.py helpers and scripts/eval_detector.py on tiny data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from common.image_io import save_image
from evaluation import detector as eval_detector
from purifier import PerturbationDetector
from purifier.perturbation_detector import save_detector
from training import detector as train_detector


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def uint8_images(count: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (count, 3, size, size), generator=gen(seed), dtype=torch.uint8)


def test_strength_is_the_rms_difference_in_255_units() -> None:
    clean = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    attacked = clean.clone()
    attacked[0] += 3  # every pixel off by 3
    attacked[1, 0, 0, 0] = 48  # one of 48 values off by 48: RMS sqrt(48^2 / 48)
    assert torch.equal(train_detector.strength(clean, attacked), torch.tensor([3.0, 48**0.5]))


def test_log_strength_loss_is_zero_on_target_and_pinned_off_it() -> None:
    target = torch.tensor([0.0, 3.0])
    assert float(train_detector.log_strength_loss(target, target)) == 0.0
    loss = train_detector.log_strength_loss(torch.tensor([0.0, 0.0]), target)
    assert float(loss) == pytest.approx(torch.log1p(torch.tensor(3.0)).item() ** 2 / 2)


def test_random_crops_are_seeded_windows_of_the_sources() -> None:
    sources = [uint8_images(1, 20, seed=1)[0], uint8_images(1, 12, seed=2)[0]]
    crops = train_detector.random_crops(sources, 5, 8, gen(3))
    assert crops.shape == (5, 3, 8, 8) and crops.dtype == torch.uint8
    assert torch.equal(crops, train_detector.random_crops(sources, 5, 8, gen(3)))
    for crop in crops:  # each crop occurs in one of the sources
        found = any(
            torch.equal(src[:, i : i + 8, j : j + 8], crop)
            for src in sources
            for i in range(src.shape[1] - 7)
            for j in range(src.shape[2] - 7)
        )
        assert found


def test_augment_moves_stacked_pairs_alike() -> None:
    clean = uint8_images(4, 16)
    pairs = torch.cat([clean, clean], 1)  # identical halves stay identical
    out = train_detector.augment(pairs, 8, gen(0))
    assert out.shape == (4, 6, 8, 8)
    assert torch.equal(out[:, :3], out[:, 3:])


def test_weaken_scales_or_masks_the_chosen_perturbations_only() -> None:
    clean = torch.full((64, 3, 16, 16), 100, dtype=torch.uint8)
    clean[:, :, :, 8:] = 200  # one vertical edge: activity 1 beside it, 0 far from it
    attacked = clean + 16
    stream = gen(0)
    before = stream.get_state()
    assert train_detector.weaken(clean, attacked, 0.0, 0.25, stream) is attacked
    assert torch.equal(stream.get_state(), before)  # off: the training stream is unchanged
    out = train_detector.weaken(clean, attacked, 0.5, 0.25, gen(0))
    assert out.dtype == torch.uint8 and out.shape == clean.shape
    delta = out.int() - clean.int()
    untouched = (delta == 16).flatten(1).all(1)
    uniform = (delta == delta[:, :1, :1, :1]).flatten(1).all(1) & ~untouched
    masked = ~untouched & ~uniform
    assert 16 < int(untouched.sum()) < 48 and int(uniform.sum()) > 0 and int(masked.sum()) > 0
    assert int(delta[uniform, 0, 0, 0].min()) >= 4  # scale >= floor: 16 x 0.25
    assert int(delta.max()) <= 16 and int(delta.min()) >= 0
    # masked crops keep the perturbation at the edge and drop it in flat areas (column 0)
    assert bool((delta[masked][..., 0] == 0).all()) and bool((delta[masked][..., 8] > 0).all())
    assert torch.equal(out, train_detector.weaken(clean, attacked, 0.5, 0.25, gen(0)))


def test_jpeg_round_trip_keeps_shape_and_changes_values() -> None:
    images = uint8_images(2, 16)
    out = train_detector.jpeg(images, 50)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert not torch.equal(out, images)


def test_natural_batch_draws_from_every_pool() -> None:
    pools = [torch.zeros(3, 3, 8, 8, dtype=torch.uint8), torch.full((5, 3, 8, 8), 255)]
    pools[1] = pools[1].to(torch.uint8)
    args = argparse.Namespace(jpeg_prob=0.0)
    batch = train_detector.natural_batch(pools, 4, args, gen(0))
    assert batch.shape == (4, 3, 8, 8)
    assert [int(b.float().mean()) for b in batch] == [0, 255, 0, 255]


@pytest.mark.parametrize(
    "extra",
    [
        ["--eps-range", "0", "4"],
        ["--eps-range", "8", "4"],
        ["--train-crop", "200"],
        ["--shards", "0"],
        ["--jpeg-prob", "1.5"],
        ["--weaken-prob", "-0.1"],
        ["--weaken-floor", "0"],
        ["--weaken-floor", "1.5"],
        ["--max-minutes", "0"],
        ["--checkpoint-every", "0"],
        ["--lr", "-1e-3"],
    ],
)
def test_cli_refuses_bad_options(extra: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        train_detector.parse_args(extra)
    assert info.value.code == 2
    assert extra[0] in capsys.readouterr().err


# --- eval_detector ------------------------------------------------------------------------------


def test_table_counts_the_share_at_or_over_each_gate() -> None:
    estimates = {"a": [0.0, 1.0, 2.0, 3.0], "empty": [], "b": [5.0]}
    text = eval_detector.table(estimates, [1.0, 2.5], {"b": [4.0, 6.0, 8.0]})
    rows = text.splitlines()
    assert rows[0] == "| group | images | median | p90 | ≥ 1 | ≥ 2.5 | true strength (median) |"
    assert rows[2] == "| a | 4 | 1.00 | 2.70 | 0.75 | 0.25 | – |"  # torch.median: lower middle
    assert rows[3] == "| b | 1 | 5.00 | 5.00 | 1.00 | 1.00 | 6.00 |"
    assert len(rows) == 4  # empty groups are left out


def test_eval_detector_cli_on_a_tiny_dataset(tmp_path: Path) -> None:
    torch.manual_seed(0)
    folder = save_detector(PerturbationDetector((4, 4, 4, 4)), tmp_path / "detector-v1", "1")
    data = tmp_path / "set"
    for name, offset in (("a.png", 2), ("b.png", 4)):
        reference = torch.full((3, 12, 12), 100 / 255)
        save_image(reference, data / "reference" / name)
        save_image(reference + offset / 255, data / "attacked" / "fgsm" / name)
    save_image(torch.rand(3, 12, 12), data / "attacked" / "fgsm" / "no-reference.png")
    (data / "attacked" / "fgsm" / "c.png").write_bytes(b"broken")
    out = tmp_path / "report.json"
    argv = ["--detector", str(folder), "--datasets", str(data), "--gates", "0", "100"]
    assert eval_detector.main([*argv, "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert sorted(report["estimates"]) == ["set: fgsm", "set: reference"]
    assert [len(v) for v in report["estimates"].values()] == [2, 3]  # the broken file skipped
    assert "| set: fgsm | 3 |" in report["table"] and "| 1.00 | 0.00 |" in report["table"]
    # true strengths of the attacked images that have a reference: 2 and 4 (1/255 units)
    assert report["true_strengths"] == {"set: fgsm": [pytest.approx(2.0), pytest.approx(4.0)]}
    rows = {row.split(" |")[0]: row for row in report["table"].splitlines()}
    assert rows["| set: reference"].endswith("| – |") and rows["| set: fgsm"].endswith(
        "| 2.00 |"
    )  # lower middle


def test_eval_detector_names_a_dataset_that_does_not_exist(tmp_path: Path) -> None:
    torch.manual_seed(0)
    detector = str(save_detector(PerturbationDetector((4, 4, 4, 4)), tmp_path / "d-v1", "1"))
    with pytest.raises(SystemExit, match=r"nope does not exist \(build it with"):
        eval_detector.main(["--detector", detector, "--datasets", str(tmp_path / "nope")])
    (tmp_path / "flat").mkdir()
    with pytest.raises(SystemExit, match="no reference/ folder"):
        eval_detector.main(["--detector", detector, "--datasets", str(tmp_path / "flat")])


def test_eval_detector_needs_something_to_score(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        eval_detector.parse_args([])
    with pytest.raises(SystemExit):
        eval_detector.parse_args(["--clean", "x", "--gates", "-1"])


# --- end to end on the real data (slow) ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.data
def test_train_detector_runs_resumes_and_writes_a_loadable_release(tmp_path: Path) -> None:
    from common.paths import default_data_dir
    from purifier import load_detector

    if not (default_data_dir() / "clean" / "train").is_dir():
        pytest.skip("needs ../shared/data (or $PURIFY_DATA)")
    run = tmp_path / "run"
    common = ["--run-dir", str(run), "--shards", "2", "--val-shards", "1", "--shard-size", "4"]
    common += ["--clive-images", "8", "--checkpoint-every", "20", "--threads", "1"]
    first = tmp_path / "detector-v1"
    assert train_detector.main(["--output", str(first), "--steps", "20", *common]) == 0
    second = tmp_path / "detector-v2"
    argv = ["--output", str(second), "--steps", "30", "--resume", "latest", *common]
    assert train_detector.main(argv) == 0
    manifest = json.loads((second / "manifest.json").read_text())
    assert manifest["training"]["steps"] == 30
    assert "clean/train" in manifest["training"]["held_out"]
    assert load_detector(second)(torch.rand(1, 3, 32, 32)).shape == (1,)
    with pytest.raises(SystemExit, match="already holds released weights"):
        train_detector.main(["--output", str(first), "--steps", "20", *common])
