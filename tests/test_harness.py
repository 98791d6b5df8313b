"""The competition-style evaluation harness ``test.py`` (loaded by path: not a module)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from scipy.stats import spearmanr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import nn

from common.paths import ROOT
from defenses import make_defense
from defenses.classical import gaussian_kernel_1d

SCRIPT = ROOT / "test.py"
ATTACKS = ("attack_a", "attack_b")
NAMES = ("img0.png", "img1.png", "img2.png")


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    from evaluation import harness as module

    return module


class BrightnessMetric(nn.Module):
    """Score = 10 + 100 * mean pixel value, ``(B, 1)``."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return 10.0 + 100.0 * images.double().mean(dim=(1, 2, 3)).unsqueeze(1)


def write_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_dataset(root: Path, sizes: dict[str, tuple[int, int]] | None = None) -> Path:
    """2 attacks x 3 images; references differ in brightness; attacked = reference + noise.

    ``attack_b/img0.png`` is an exact copy of its reference (PSNR hits the cap).
    """
    rng = np.random.default_rng(0)
    sizes = sizes or {}
    for i, name in enumerate(NAMES):
        height, width = sizes.get(name, (32, 32))
        base = rng.integers(0, 160, size=(height, width, 3)) + 30 * i
        reference = base.astype(np.uint8)
        write_png(reference, root / "reference" / name)
        for attack in ATTACKS:
            if attack == "attack_b" and name == "img0.png":
                attacked = reference
            else:
                noise = rng.integers(-12, 13, size=reference.shape)
                attacked = np.clip(reference.astype(int) + noise, 0, 255).astype(np.uint8)
            write_png(attacked, root / "attacked" / attack / name)
    return root


def read_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0


def brightness_score(image: np.ndarray) -> float:
    return 10.0 + 100.0 * float(image.astype(np.float64).mean())


def mirror_blur(image: np.ndarray) -> np.ndarray:
    """3x3 Gaussian (sigma 0.8) per channel, mirror padding (= torch's reflect), in float64."""
    taps = gaussian_kernel_1d(0.8, 3).numpy()
    kernel = np.outer(taps, taps)[..., None]  # (3, 3, 1): no mixing across channels
    blurred = ndimage.correlate(image.astype(np.float64), kernel, mode="mirror")
    return np.clip(blurred, 0, 1).astype(np.float32)


def expected_rows(data_dir: Path, defend) -> dict[str, dict[str, float]]:
    """The competition's figures computed independently, keyed by attack."""
    per_image: dict[str, list[dict[str, float]]] = {}
    for attack in ATTACKS:
        for name in NAMES:
            reference = read_rgb(data_dir / "reference" / name)
            attacked = read_rgb(data_dir / "attacked" / attack / name)
            defended = defend(attacked)
            if np.array_equal(reference, defended):
                psnr = 80.0
            else:
                psnr = min(80.0, peak_signal_noise_ratio(reference, defended, data_range=1))
            ssim = structural_similarity(reference, defended, channel_axis=2, data_range=1)
            source, defense = brightness_score(reference), brightness_score(defended)
            per_image.setdefault(attack, []).append(
                {
                    "Quality Score": (ssim + psnr / 80) / 2,
                    "Gain Score": abs(source - defense) / source * 100,
                    "Source Linearity": source,
                    "Defense Linearity": defense,
                    "Attacked Linearity": brightness_score(attacked),
                    "PSNR": psnr,
                    "SSIM": ssim,
                }
            )
    rows = {}
    for attack, images in per_image.items():
        row = {k: float(np.mean([im[k] for im in images])) for k in images[0]}
        source = [im["Source Linearity"] for im in images]
        defense = [im["Defense Linearity"] for im in images]
        row["SRCC"] = float(spearmanr(source, defense).statistic)
        rows[attack] = row
    everything = [im for images in per_image.values() for im in images]
    total = {k: float(np.mean([im[k] for im in everything])) for k in everything[0]}
    total["SRCC"] = float(np.mean([rows[a]["SRCC"] for a in ATTACKS]))
    rows["All Attacks"] = total
    return rows


def assert_row_matches(row: dict[str, str], expected: dict[str, float]) -> None:
    for key, value in expected.items():
        assert float(row[key]) == pytest.approx(value, rel=1e-5, abs=1e-6), key
    seconds = float(row["Time per image (s)"])
    assert 0 <= seconds < 5


@pytest.mark.parametrize(
    ("name", "defend"),
    [("none", lambda image: image), ("blur", mirror_blur)],
)
def test_scores_csv_matches_hand_computation(harness, tmp_path: Path, name: str, defend) -> None:
    data_dir = make_dataset(tmp_path / "data")
    pairs = harness.collect_pairs(data_dir)
    records = harness.evaluate(
        pairs, make_defense(name), BrightnessMetric(), batch_size=4, num_workers=2, progress=False
    )
    assert [(r.attack, r.name) for r in records] == [(a, n) for a in ATTACKS for n in NAMES]
    path = harness.write_scores(harness.aggregate(records), tmp_path / "out", "full")
    assert path == tmp_path / "out" / "scores.csv"
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == harness.COLUMNS
        rows = list(reader)
    assert [row["Attack"] for row in rows] == [*ATTACKS, "All Attacks"]
    expected = expected_rows(data_dir, defend)
    for row in rows:
        assert_row_matches(row, expected[row["Attack"]])
    if name == "none":  # attacked == reference for one image: PSNR capped, quality exactly 1
        capped = [r for r in records if r.attack == "attack_b" and r.name == "img0.png"]
        assert capped[0].psnr == 80.0 and capped[0].quality == 1.0


def test_scores_json_holds_all_attacks_figures(harness, tmp_path: Path) -> None:
    data_dir = make_dataset(tmp_path / "data")
    records = harness.evaluate(
        harness.collect_pairs(data_dir), make_defense("blur"), BrightnessMetric(), progress=False
    )
    path = harness.write_scores(harness.aggregate(records), tmp_path / "out", "simple")
    assert path.name == "scores.json"
    data = json.loads(path.read_text())
    expected = expected_rows(data_dir, mirror_blur)["All Attacks"]
    assert set(data) == set(harness.COLUMNS) - {"Attack"}
    for key, value in expected.items():
        assert data[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_srcc_nan_is_skipped_and_written_as_null(harness, tmp_path: Path) -> None:
    record = harness.ImageRecord("solo", "a.png", 50.0, 40.0, 60.0, 30.0, 0.9, 0.7, 20.0, 0.1)
    pair = [
        harness.ImageRecord("duo", n, s, d, 1.0, 30.0, 0.9, 0.7, 1.0, 0.1)
        for n, s, d in (("a.png", 1.0, 2.0), ("b.png", 2.0, 1.0))
    ]
    rows = harness.aggregate([record, *pair])
    by_attack = {row["Attack"]: row for row in rows}
    assert math.isnan(by_attack["solo"]["SRCC"])
    assert by_attack["duo"]["SRCC"] == pytest.approx(-1.0)
    assert by_attack["All Attacks"]["SRCC"] == pytest.approx(-1.0)
    assert by_attack["All Attacks"]["Gain Score"] == pytest.approx(22.0 / 3)
    only_solo = harness.aggregate([record])
    path = harness.write_scores(only_solo, tmp_path, "simple")
    assert json.loads(path.read_text())["SRCC"] is None


def test_gain_and_quality_formulas(harness) -> None:
    assert harness.gain_score(50.0, 40.0) == pytest.approx(20.0)
    assert harness.gain_score(50.0, 60.0) == pytest.approx(20.0)
    assert harness.gain_score(-50.0, -40.0) == pytest.approx(-20.0)  # signed, as the competition
    assert harness.quality_score(40.0, 0.8) == pytest.approx(0.65)
    image = np.full((8, 8, 3), 0.5, dtype=np.float32)
    assert harness.psnr_ssim(image, image) == (80.0, 1.0)


def test_mixed_sizes_and_resized_output(harness, tmp_path: Path) -> None:
    sizes = {"img1.png": (24, 40), "img2.png": (40, 24)}
    data_dir = make_dataset(tmp_path / "data", sizes)
    pairs = harness.collect_pairs(data_dir)
    assert len(harness.size_batches(pairs, batch_size=8)) == 3

    class HalfSize:
        def apply_defense(self, images: torch.Tensor) -> torch.Tensor:
            return F.interpolate(images, scale_factor=0.5, mode="bilinear", antialias=True)

    records = harness.evaluate(pairs, HalfSize(), BrightnessMetric(), batch_size=8, progress=False)
    assert [(r.attack, r.name) for r in records] == [(a, n) for a in ATTACKS for n in NAMES]
    for record in records:
        attacked = torch.from_numpy(read_rgb(data_dir / "attacked" / record.attack / record.name))
        reference = read_rgb(data_dir / "reference" / record.name)
        small = HalfSize().apply_defense(attacked.permute(2, 0, 1)[None])
        assert record.defense_score == pytest.approx(10 + 100 * small.mean().item(), rel=1e-6)
        back = F.interpolate(
            small, size=reference.shape[:2], mode="bilinear", align_corners=False, antialias=True
        )
        back_np = back[0].permute(1, 2, 0).numpy()
        psnr = peak_signal_noise_ratio(reference, back_np, data_range=1)
        assert record.psnr == pytest.approx(psnr, rel=1e-6)
        assert record.source_score == pytest.approx(brightness_score(reference), rel=1e-6)


def test_the_real_baseline_is_scored_at_half_size(harness, tmp_path: Path) -> None:
    from defenses import make_defense

    sizes = {name: (65, 97) for name in NAMES}
    data_dir = make_dataset(tmp_path / "data", sizes)
    seen: list[tuple[int, int]] = []

    class ShapeRecordingMetric(BrightnessMetric):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            seen.append(tuple(images.shape[-2:]))
            return super().forward(images)

    pairs = harness.collect_pairs(data_dir)
    records = harness.evaluate(
        pairs, make_defense("resize"), ShapeRecordingMetric(), batch_size=8, progress=False
    )
    # per batch: defended (scored as returned, 32x48), attacked, then the references
    assert seen[0] == (32, 48) and set(seen[1:]) == {(65, 97)}
    for record in records:
        attacked = torch.from_numpy(read_rgb(data_dir / "attacked" / record.attack / record.name))
        small = make_defense("resize").apply_defense(attacked.permute(2, 0, 1)[None])
        assert record.defense_score == pytest.approx(10 + 100 * small.mean().item(), rel=1e-6)


def test_missing_reference_names_the_file(harness, tmp_path: Path) -> None:
    data_dir = make_dataset(tmp_path / "data")
    (data_dir / "reference" / "img1.png").unlink()
    with pytest.raises(ValueError, match=r"no reference for .*attack_a.img1\.png"):
        harness.collect_pairs(data_dir)
    with pytest.raises(SystemExit, match=r"img1\.png"):
        harness.main(["--data_dir", str(data_dir), "--output_dir", str(tmp_path / "o")])


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda d: os.rename(d / "attacked", d / "attacks"), "attacked is not a folder"),
        (lambda d: os.rename(d / "reference", d / "refs"), "reference is not a folder"),
        (lambda d: (d / "attacked" / "attack_c").mkdir(), "attack_c holds no image"),
        (
            lambda d: write_png(np.zeros((4, 4, 3), np.uint8), d / "attacked" / "loose.png"),
            "loose.png sits directly in",
        ),
    ],
)
def test_wrong_layout_is_a_clear_error(harness, tmp_path: Path, breakage, message: str) -> None:
    data_dir = make_dataset(tmp_path / "data")
    breakage(data_dir)
    with pytest.raises(ValueError, match=message):
        harness.collect_pairs(data_dir)


def test_hidden_folders_under_attacked_are_not_attacks(harness, tmp_path: Path) -> None:
    data_dir = make_dataset(tmp_path / "data")
    (data_dir / "attacked" / ".ipynb_checkpoints").mkdir()  # empty: an attack would fail
    write_png(np.zeros((4, 4, 3), np.uint8), data_dir / "attacked" / ".thumbs" / "img0.png")
    pairs = harness.collect_pairs(data_dir)
    assert sorted({pair.attack for pair in pairs}) == list(ATTACKS) and len(pairs) == 6


def test_unusable_output_dir_fails_before_the_evaluation(
    harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = make_dataset(tmp_path / "data")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(harness, "collect_pairs", lambda _: pytest.fail("evaluation started"))
    for output_dir in (blocker, blocker / "sub"):
        argv = ["--data_dir", str(data_dir), "--output_dir", str(output_dir)]
        with pytest.raises(SystemExit, match=r"test.py: error: cannot use --output_dir .*a-file"):
            harness.main(argv)


def test_no_attack_folder_is_an_error(harness, tmp_path: Path) -> None:
    (tmp_path / "attacked").mkdir()
    (tmp_path / "reference").mkdir()
    with pytest.raises(ValueError, match="no attack folder"):
        harness.collect_pairs(tmp_path)


def test_bad_defense_output_and_bad_metric_are_errors(harness, tmp_path: Path) -> None:
    pairs = harness.collect_pairs(make_dataset(tmp_path / "data"))

    class Overshoot:
        def apply_defense(self, images: torch.Tensor) -> torch.Tensor:
            return images * 2

    with pytest.raises(ValueError, match=r"invalid output for .*img0\.png.*\[0, 1\]"):
        harness.evaluate(pairs, Overshoot(), BrightnessMetric(), progress=False)
    with pytest.raises(ValueError, match="one score per image"):
        harness.evaluate(pairs, make_defense("none"), lambda x: x.mean(), progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        harness.evaluate(pairs, make_defense("none"), BrightnessMetric(), batch_size=0)


def test_images_too_small_for_ssim_name_the_files(harness, tmp_path: Path) -> None:
    data_dir = make_dataset(tmp_path / "data", {name: (5, 5) for name in NAMES})
    pairs = harness.collect_pairs(data_dir)
    with pytest.raises(ValueError, match=r"cannot compute PSNR/SSIM for .*img0\.png"):
        harness.evaluate(pairs, make_defense("none"), BrightnessMetric(), progress=False)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--batch_size", "0"], "--batch_size must be >= 1"),
        (["--num_workers", "-1"], "--num_workers >= 0"),
        pytest.param(
            ["--device", "cuda"],
            "CUDA is not available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present"),
        ),
    ],
)
def test_bad_cli_options_exit_with_message(harness, tmp_path: Path, extra, message) -> None:
    data_dir = make_dataset(tmp_path / "data")
    argv = ["--data_dir", str(data_dir), "--output_dir", str(tmp_path / "o"), *extra]
    with pytest.raises(SystemExit, match=message):
        harness.main(argv)


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )


def test_help_runs() -> None:
    result = run_script("--help")
    assert result.returncode == 0, result.stderr
    for option in ("--data_dir", "--score_detail_level", "--checkpoint_dir", "--defense"):
        assert option in result.stdout


def test_end_to_end_with_p1q2_checkpoint(tmp_path: Path, p1q2_checkpoint: Path) -> None:
    data_dir = make_dataset(tmp_path / "data")
    checkpoint_dir = tmp_path / "ckpt"
    checkpoint_dir.mkdir()
    (checkpoint_dir / "p1q2.pth").symlink_to(p1q2_checkpoint)
    out = tmp_path / "out"
    result = run_script(
        "--data_dir",
        str(data_dir),
        "--output_dir",
        str(out),
        "--device",
        "cpu",
        "--checkpoint_dir",
        str(checkpoint_dir),
        "--defense",
        "resize",
        "--num_workers",
        "2",
        "--batch_size",
        "4",
        "--no_progress",
    )
    assert result.returncode == 0, result.stderr
    assert "All Attacks" in result.stdout
    with (out / "scores.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["Attack"] for row in rows] == [*ATTACKS, "All Attacks"]
    for row in rows:
        values = {k: float(v) for k, v in row.items() if k != "Attack"}
        assert all(math.isfinite(v) for v in values.values()), row
        assert 0 < values["PSNR"] < 80 and -1 <= values["SSIM"] <= 1
        assert -1 <= values["SRCC"] <= 1
    sources = [float(row["Source Linearity"]) for row in rows]
    # Same references in both attacks: identical source scores, and so their mean.
    assert sources[0] == pytest.approx(sources[1], rel=1e-6)
    assert sources[2] == pytest.approx(sources[0], rel=1e-6)


# --- what the mutation audit found unpinned (stop 27) ----------------------------------------


def test_main_uses_the_checkpoint_defense_and_detail_level_given(
    harness, tmp_path: Path, p1q2_checkpoint: Path
) -> None:
    from model import MetricModel

    data_dir = make_dataset(tmp_path / "data")
    checkpoint_dir = tmp_path / "ckpt"
    checkpoint_dir.mkdir()
    (checkpoint_dir / "p1q2.pth").symlink_to(p1q2_checkpoint)
    out = tmp_path / "out"
    argv = ["--data_dir", str(data_dir), "--output_dir", str(out), "--no_progress"]
    argv += ["--checkpoint_dir", str(checkpoint_dir), "--defense", "none"]
    assert harness.main([*argv, "--score_detail_level", "simple"]) == 0
    assert not (out / "scores.csv").exists()
    scores = json.loads((out / "scores.json").read_text())
    # the checkpoint given scores the references (the stand-in would give other numbers)
    metric = MetricModel("cpu", p1q2_checkpoint).eval()
    with torch.no_grad():
        source = [
            float(
                metric(
                    torch.from_numpy(read_rgb(data_dir / "reference" / name)).permute(2, 0, 1)[None]
                )
            )
            for name in NAMES
        ]
    assert scores["Source Linearity"] == pytest.approx(np.mean(source), rel=1e-5)
    # defense "none": the defended images are the attacked ones, PSNR/SSIM as computed by hand
    expected = expected_rows(data_dir, lambda image: image)["All Attacks"]
    for key in ("PSNR", "SSIM", "Quality Score"):
        assert scores[key] == pytest.approx(expected[key], rel=1e-5), key
    assert scores["Defense Linearity"] == pytest.approx(scores["Attacked Linearity"], rel=1e-6)


def test_size_batches_splits_each_size_group_by_the_batch_size(harness, tmp_path: Path) -> None:
    data_dir = make_dataset(tmp_path / "data", {"img2.png": (24, 40)})
    pairs = harness.collect_pairs(data_dir)
    assert [(p.attack, p.attacked.name) for p in pairs] == [(a, n) for a in ATTACKS for n in NAMES]
    assert harness.size_batches(pairs, 2) == [[0, 1], [3, 4], [2, 5]]
    assert harness.size_batches(pairs, 1) == [[0], [1], [3], [4], [2], [5]]


def test_psnr_above_the_cap_is_capped_for_images_that_differ(harness) -> None:
    reference = np.full((64, 64, 3), 0.5, dtype=np.float32)
    defended = reference.copy()
    defended[0, 0, 0] += 1 / 255  # about 89 dB uncapped
    assert peak_signal_noise_ratio(reference, defended, data_range=1) > 85
    assert harness.psnr_ssim(reference, defended)[0] == 80.0


def test_a_defense_that_edits_its_input_does_not_change_the_attacked_scores(
    harness, tmp_path: Path
) -> None:
    data_dir = make_dataset(tmp_path / "data")

    class InPlace:
        def apply_defense(self, images: torch.Tensor) -> torch.Tensor:
            return images.mul_(0.5)

    records = harness.evaluate(
        harness.collect_pairs(data_dir), InPlace(), BrightnessMetric(), progress=False
    )
    for record in records:
        attacked = read_rgb(data_dir / "attacked" / record.attack / record.name)
        assert record.attacked_score == pytest.approx(brightness_score(attacked), rel=1e-6)
        assert record.defense_score == pytest.approx(brightness_score(attacked * 0.5), rel=1e-5)


def test_a_larger_output_is_resized_down_with_antialiasing(harness, tmp_path: Path) -> None:
    data_dir = make_dataset(tmp_path / "data")

    class Double:
        def apply_defense(self, images: torch.Tensor) -> torch.Tensor:
            return F.interpolate(images, scale_factor=2, mode="nearest")

    records = harness.evaluate(
        harness.collect_pairs(data_dir), Double(), BrightnessMetric(), progress=False
    )
    for record in records:
        attacked = torch.from_numpy(read_rgb(data_dir / "attacked" / record.attack / record.name))
        big = Double().apply_defense(attacked.permute(2, 0, 1)[None])
        back = F.interpolate(big, size=(32, 32), mode="bilinear", antialias=True)
        reference = read_rgb(data_dir / "reference" / record.name)
        back_np = back[0].permute(1, 2, 0).numpy()
        if np.array_equal(reference, back_np):
            continue
        psnr = peak_signal_noise_ratio(reference, back_np, data_range=1)
        assert record.psnr == pytest.approx(psnr, rel=1e-6)


def test_time_per_image_divides_a_batch_call_by_its_images(harness, tmp_path: Path) -> None:
    import time

    pairs = harness.collect_pairs(make_dataset(tmp_path / "data"))

    class Slow:
        def apply_defense(self, images: torch.Tensor) -> torch.Tensor:
            time.sleep(0.3)
            return images

    records = harness.evaluate(pairs, Slow(), BrightnessMetric(), batch_size=6, progress=False)
    assert len({r.seconds for r in records}) == 1  # one call for the 6 images
    assert 0.3 / 6 <= records[0].seconds < 0.3 / 2


def test_the_harness_refuses_what_it_cannot_score(
    harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pairs = harness.collect_pairs(make_dataset(tmp_path / "data"))

    class DropsOne:
        def apply_defense(self, images: torch.Tensor) -> torch.Tensor:
            return images[1:]

    with pytest.raises(ValueError, match=r"returned 2 images for a batch of 3"):
        harness.evaluate(pairs, DropsOne(), BrightnessMetric(), batch_size=3, progress=False)
    with pytest.raises(ValueError, match="no image pairs to evaluate"):
        harness.evaluate([], make_defense("none"), BrightnessMetric())
    with pytest.raises(ValueError, match="no records to aggregate"):
        harness.aggregate([])
    records = harness.evaluate(pairs[:2], make_defense("none"), BrightnessMetric(), progress=False)
    with pytest.raises(ValueError, match="score_detail_level must be 'full' or 'simple'"):
        harness.write_scores(harness.aggregate(records), tmp_path / "out", "detailed")

    def no_fallback(*args: object) -> None:
        raise FileNotFoundError("no stand-in either")

    monkeypatch.setattr(harness, "MetricModel", no_fallback)
    with pytest.raises(ValueError, match="MetricModel's fallback failed: no stand-in either"):
        harness.load_metric(tmp_path / "empty", torch.device("cpu"))


def test_baseline_differences_are_signed_so_that_positive_is_better(harness) -> None:
    rows = [
        {"Attack": "a", "Gain Score": 4.0, "Quality Score": 0.7, "SRCC": 0.9},
        {"Attack": "b", "Gain Score": 9.0, "Quality Score": 0.5, "SRCC": 0.6},
        {"Attack": "All Attacks", "Gain Score": 6.5, "Quality Score": 0.6, "SRCC": 0.75},
    ]
    baseline = [
        {"Attack": "a", "Gain Score": 6.0, "Quality Score": 0.6, "SRCC": 0.8},
        {"Attack": "All Attacks", "Gain Score": 6.0, "Quality Score": 0.65, "SRCC": 0.8},
    ]
    diffs = {row["Attack"]: row for row in harness.baseline_differences(rows, baseline)}
    assert diffs["a"]["Gain vs baseline"] == pytest.approx(2.0)  # 6 - 4: lower Gain is better
    assert diffs["a"]["Quality vs baseline"] == pytest.approx(0.1)
    assert diffs["a"]["SRCC vs baseline"] == pytest.approx(0.1)
    assert diffs["All Attacks"]["Gain vs baseline"] == pytest.approx(-0.5)
    assert diffs["All Attacks"]["Quality vs baseline"] == pytest.approx(-0.05)
    assert all(math.isnan(v) for k, v in diffs["b"].items() if k != "Attack")


def test_compare_to_writes_the_differences_from_the_baseline(
    harness, tmp_path: Path, p1q2_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    data_dir = make_dataset(tmp_path / "data")
    checkpoint_dir = tmp_path / "ckpt"
    checkpoint_dir.mkdir()
    (checkpoint_dir / "p1q2.pth").symlink_to(p1q2_checkpoint)
    argv = ["--data_dir", str(data_dir), "--checkpoint_dir", str(checkpoint_dir), "--no_progress"]
    for name in ("blur", "resize"):
        assert harness.main([*argv, "--output_dir", str(tmp_path / name), "--defense", name]) == 0
    out = tmp_path / "both"
    assert (
        harness.main(
            [*argv, "--output_dir", str(out), "--defense", "blur"] + ["--compare_to", "resize"]
        )
        == 0
    )
    assert "blur minus resize (positive = better)" in capsys.readouterr().out

    def read(path: Path) -> dict[str, dict[str, str]]:
        with path.open(newline="") as f:
            return {row["Attack"]: row for row in csv.DictReader(f)}

    blur, resize = read(tmp_path / "blur" / "scores.csv"), read(tmp_path / "resize" / "scores.csv")
    comparison = read(out / "comparison_to_resize.csv")
    assert list(comparison) == [*ATTACKS, "All Attacks"]
    for attack, row in comparison.items():
        for column, (key, sign) in harness.BASELINE_DIFFERENCES.items():
            expected = sign * (float(blur[attack][key]) - float(resize[attack][key]))
            assert float(row[column]) == pytest.approx(expected, rel=1e-6, abs=1e-9), column
