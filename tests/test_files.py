"""Files: atomic writes, inputs never touched, damaged and non-image files, resuming an
interrupted purify run (with the temp files a crash leaves), and ``test.py``'s data layout."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

from common.atomic_write import staged_folder
from common.image_io import (
    ImageReadError,
    as_uint8,
    jpeg_round_trip,
    list_folders,
    list_images,
    load_image,
    load_images_uint8,
    random_window,
    save_image,
    temp_file_target,
    to_uint8,
)
from defenses import make_defense
from purifier import DiffusionPurifier
from purifier.cli import main as purify_main
from purifier.folder_plan import plan_folder

FAST = ["--t-star", "20", "--steps", "2", "--seed", "0"]


pytestmark = pytest.mark.usefixtures("provisional_defaults")


def random_image(height: int, width: int, seed: int) -> torch.Tensor:
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed))


def three_images(root: Path) -> Path:
    for i, name in enumerate(["a.png", "b.png", "c.png"]):
        save_image(random_image(12, 10, i), root / name)
    return root


def purify(source: Path, out: Path, weights: Path, *extra: str) -> int:
    return purify_main([str(source), str(out), "--weights", str(weights), *FAST, *extra])


def files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) -> its bytes."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def digest(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files(folder).items()}


ORIGINAL_SAVE = Image.Image.save


def failing_save(fail_on: int, error: BaseException):
    """A stand-in for ``PIL.Image.Image.save``: call number ``fail_on`` writes half an image,
    then raises ``error``; the other calls save normally."""
    calls = []

    def save(image: Image.Image, fp, *args, **kwargs) -> None:
        calls.append(fp)
        if len(calls) != fail_on:
            return ORIGINAL_SAVE(image, fp, *args, **kwargs)
        with open(fp, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n half an image")
        raise error

    return save


# --- atomic writes ---------------------------------------------------------------------------


def test_failed_save_keeps_the_old_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "x.png"
    save_image(random_image(6, 6, 0), target)
    before = target.read_bytes()
    monkeypatch.setattr(Image.Image, "save", failing_save(1, OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        save_image(random_image(6, 6, 1), target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_purify_write_failure_leaves_no_partial_output_and_resumes(
    tiny_weights: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
    error: BaseException,
) -> None:
    source, out = three_images(tmp_path / "in"), tmp_path / "out"
    monkeypatch.setattr(Image.Image, "save", failing_save(2, error))
    if isinstance(error, KeyboardInterrupt):  # a user's Ctrl-C stops the run, cleanly
        with pytest.raises(KeyboardInterrupt):
            purify(source, out, tiny_weights)
        assert sorted(files(out)) == ["a.png"]
    else:  # an OSError skips that image and goes on
        assert purify(source, out, tiny_weights) == 1
        assert "cannot write" in caplog.text and "disk full" in caplog.text
        assert sorted(files(out)) == ["a.png", "c.png"]
    assert all(load_image(out / name).shape == (3, 12, 10) for name in files(out))
    monkeypatch.setattr(Image.Image, "save", ORIGINAL_SAVE)
    done = len(files(out))
    capsys.readouterr()
    assert purify(source, out, tiny_weights) == 0
    assert f"processed {3 - done}, skipped {done} (output exists)" in capsys.readouterr().out
    assert sorted(files(out)) == ["a.png", "b.png", "c.png"]


def test_hidden_folders_are_skipped_like_hidden_files(
    tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    source = three_images(tmp_path / "in")
    save_image(random_image(12, 10, 5), source / ".thumbs" / "t.png")
    save_image(random_image(12, 10, 6), source / "sub" / ".cache" / "u.png")
    (source / ".ipynb_checkpoints").mkdir()
    (source / ".ipynb_checkpoints" / "notes.txt").write_text("not an image, and hidden")
    save_image(random_image(12, 10, 7), source / "sub" / "d.png")
    expected = ["a.png", "b.png", "c.png", "sub/d.png"]
    listed = list_images(source, recursive=True)
    assert [p.relative_to(source).as_posix() for p in listed] == expected
    assert list_folders(source) == [source / "sub"]
    assert purify(source, tmp_path / "out", tiny_weights) == 0
    assert "processed 4, skipped 0 (output exists), failed 0, ignored 0" in capsys.readouterr().out
    assert sorted(files(tmp_path / "out")) == expected


# --- resuming --------------------------------------------------------------------------------


def test_resume_redoes_only_the_missing_output_and_cleans_crash_leftovers(
    tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    source, out = three_images(tmp_path / "in"), tmp_path / "out"
    assert purify(source, out, tiny_weights) == 0
    first = files(out)
    stamps = {name: (out / name).stat().st_mtime_ns for name in first}
    (out / "b.png").unlink()
    # What a killed run leaves: temp files of the image it was writing and of a finished one,
    # plus hidden files that only look similar and belong to someone else.
    crash = [out / ".b.png.k3j_9x2q.part", out / ".a.png.zz81mn0p.part"]
    others = [out / ".b.png.part", out / "b.png.abc.part", out / ".b.png.a.b.part.bak"]
    for path in crash + others:
        path.write_bytes(b"partial")
    (source / ".a.png.q1w2e3r4.part").write_bytes(b"a crashed write inside the input folder")
    capsys.readouterr()
    assert purify(source, out, tiny_weights) == 0
    summary = capsys.readouterr().out
    assert "processed 1, skipped 2 (output exists), failed 0, ignored 0" in summary
    assert not any(path.exists() for path in crash)
    assert all(path.exists() for path in others)
    assert {name: files(out)[name] for name in first} == first  # b.png: same seed, same pixels
    assert all((out / name).stat().st_mtime_ns == stamps[name] for name in ("a.png", "c.png"))


def test_temp_file_target() -> None:
    folder = Path("/some/folder")
    assert temp_file_target(folder / ".x.png.ab_12cd3.part") == folder / "x.png"
    assert temp_file_target(folder / ".x.y.png.ab12cd3z.part") == folder / "x.y.png"
    for name in [".x.png.part", "x.png.ab12cd3z.part", ".x.png.ab-12.part", "..ab12.part", ".part"]:
        assert temp_file_target(folder / name) is None, name


# --- inputs are never touched ----------------------------------------------------------------


def test_inputs_are_never_modified(tiny_weights: Path, tmp_path: Path) -> None:
    source = three_images(tmp_path / "in")
    save_image(random_image(8, 8, 5), source / "sub" / "d.jpg")
    before = digest(source)
    for extra in ([], ["--overwrite"], ["--keep-format", "--overwrite"], ["--batch-size", "3"]):
        assert purify(source, tmp_path / "out", tiny_weights, *extra) == 0
    assert digest(source) == before


def test_an_output_symlinked_into_the_input_is_refused(
    tiny_weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = three_images(tmp_path / "in")
    save_image(random_image(8, 8, 5), source / "sub" / "d.jpg")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(source / "sub", target_is_directory=True)
    before = digest(source)
    with caplog.at_level(logging.WARNING):
        assert purify(source, out, tiny_weights) == 1
    assert "lies inside the input folder" in caplog.text
    assert digest(source) == before
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png", "sub"]


def test_a_symlinked_input_is_named_by_its_link(tiny_weights: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "real.png"
    save_image(random_image(8, 8, 0), elsewhere)
    source = tmp_path / "in"
    source.mkdir()
    (source / "link.png").symlink_to(elsewhere)
    plan = plan_folder(source, tmp_path / "out")
    assert [job.key for job in plan.jobs] == ["link.png"]
    assert purify(source, tmp_path / "out", tiny_weights) == 0
    assert sorted(files(tmp_path / "out")) == ["link.png"]


# --- damaged and non-image files -------------------------------------------------------------


def test_damaged_and_non_image_files_are_skipped(
    tiny_weights: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
) -> None:
    source = tmp_path / "in"
    save_image(random_image(8, 8, 0), source / "good.png")
    save_image(random_image(30, 30, 1), source / "bomb.png")
    save_image(random_image(12, 12, 2), source / "cut.jpg")
    data = (source / "cut.jpg").read_bytes()
    (source / "cut.jpg").write_bytes(data[: len(data) // 2])
    (source / "empty.png").write_bytes(b"")
    (source / "text.jpg").write_text("not a picture")
    (source / "folder.png").mkdir()
    (source / "readme.md").write_text("notes")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)  # 30 x 30 > 2 x 400: a "bomb"
    with caplog.at_level(logging.WARNING):
        assert purify(source, tmp_path / "out", tiny_weights) == 1
    assert sorted(files(tmp_path / "out")) == ["good.png"]
    for name in ["bomb.png", "cut.jpg", "empty.png", "text.jpg", "readme.md"]:
        assert name in caplog.text, name
    assert "processed 1, skipped 0 (output exists), failed 4, ignored 1" in capsys.readouterr().out


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_load_image_turns_an_image_upright_by_its_exif_orientation(
    tmp_path: Path, suffix: str
) -> None:
    pixels = np.zeros((20, 30, 3), dtype=np.uint8)
    pixels[:4, :6] = 255  # a white top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    Image.fromarray(pixels).save(tmp_path / f"phone{suffix}", exif=exif)
    image = load_image(tmp_path / f"phone{suffix}")
    assert image.shape == (3, 30, 20)  # upright: the stored landscape shows as portrait
    assert image[:, :6, -4:].mean() > 0.9 and image[:, -6:, :4].mean() < 0.1  # corner moved


def test_load_images_uint8_keeps_8_bit_pixels_exactly_and_skips_only_when_asked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels[:, :, 0]).save(tmp_path / "grey.png")
    (tmp_path / "bad.jpg").write_text("not a picture")
    paths = [tmp_path / "a.png", tmp_path / "bad.jpg", tmp_path / "grey.png"]
    with caplog.at_level(logging.WARNING):
        colour, grey = load_images_uint8(paths, skip_unreadable=True)
    assert "bad.jpg" in caplog.text
    assert colour.dtype == torch.uint8 and colour.shape == (3, 5, 7)
    assert np.array_equal(colour.permute(1, 2, 0).numpy(), pixels)
    assert all(np.array_equal(grey[c].numpy(), pixels[:, :, 0]) for c in range(3))
    with pytest.raises(ImageReadError, match=r"bad\.jpg"):
        load_images_uint8(paths)


def test_8_bit_conversion_rounds_to_nearest_clips_and_keeps_every_level() -> None:
    values = torch.tensor([-0.5, 0.0, 0.4 / 255, 0.6 / 255, 127.49 / 255, 254.51 / 255, 1.0, 2.0])
    assert as_uint8(values).tolist() == [0, 0, 0, 1, 127, 255, 255, 255]
    levels = torch.arange(256, dtype=torch.float32) / 255  # what load_image reads from 8 bits
    assert torch.equal(as_uint8(levels), torch.arange(256).to(torch.uint8))
    batch = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    assert as_uint8(batch).shape == (2, 3, 4, 5)
    assert torch.equal(as_uint8(batch[1]), as_uint8(batch)[1])
    hwc = to_uint8(batch[1].double().requires_grad_())
    assert hwc.dtype == np.uint8 and hwc.shape == (4, 5, 3)
    assert np.array_equal(hwc, as_uint8(batch[1]).permute(1, 2, 0).numpy())


def test_8_bit_conversion_refuses_what_is_not_a_float_image() -> None:
    with pytest.raises(ValueError, match="float tensor"):
        as_uint8(torch.zeros(3, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(3, H, W\) image"):
        to_uint8(torch.zeros(1, 3, 2, 2))


def test_one_jpeg_round_trip_serves_the_jpeg_defense_and_the_metric_distortion() -> None:
    from defenses.classical import JpegDefense
    from metrics.synthetic_distortions import jpeg_compress

    y, x = torch.meshgrid(torch.linspace(0, 1, 24), torch.linspace(0, 1, 32), indexing="ij")
    image = torch.stack([x, y, (x + y) / 2])  # smooth: JPEG at q95 keeps it closely
    fine, coarse = jpeg_round_trip(image, 95), jpeg_round_trip(image, 50)
    assert fine.shape == image.shape and fine.dtype == torch.float32
    assert fine.min() >= 0 and fine.max() <= 1 and (fine - image).abs().mean() < 2 / 255
    assert not torch.equal(fine, coarse)
    assert torch.equal(JpegDefense(quality=50).purify(image[None])[0], coarse)
    distorted = jpeg_compress(image.double(), 50)
    assert distorted.dtype == torch.float64 and torch.equal(distorted.float(), coarse)
    for quality in (0, 101, 50.0, True):
        with pytest.raises(ValueError, match="JPEG quality must be an int in"):
            jpeg_round_trip(image, quality)


def test_load_image_reports_a_decompression_bomb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_image(random_image(30, 30, 1), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)
    with pytest.raises(ImageReadError, match=r"cannot read image .*bomb\.png"):
        load_image(tmp_path / "bomb.png")


def test_a_failed_purification_skips_that_batch_only(
    tiny_weights: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = tmp_path / "in"
    save_image(random_image(8, 8, 0), source / "small.png")
    save_image(random_image(9, 9, 1), source / "odd.png")
    original = DiffusionPurifier.purify_all  # what every path (whole or tiled) runs

    def out_of_memory(self, images, generator=None, t_star=None, noise=None):
        if images.shape[-1] == 9:
            raise RuntimeError("DefaultCPUAllocator: not enough memory")
        return original(self, images, generator, t_star, noise)

    monkeypatch.setattr(DiffusionPurifier, "purify_all", out_of_memory)
    assert purify(source, tmp_path / "out", tiny_weights) == 1
    assert "cannot purify" in caplog.text and "odd.png" in caplog.text
    assert sorted(files(tmp_path / "out")) == ["small.png"]


# --- test.py: data layout --------------------------------------------------------------------


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    from evaluation import harness as module

    return module


def small_dataset(root: Path) -> Path:
    for folder in ("reference", "attacked/fgsm"):
        (root / folder).mkdir(parents=True)
        Image.fromarray(np.full((16, 16, 3), 100, np.uint8)).save(root / folder / "x.png")
    return root


def test_harness_names_a_missing_data_folder(harness: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data folder .*nowhere does not exist"):
        harness.collect_pairs(tmp_path / "nowhere")
    argv = ["--data_dir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "o")]
    with pytest.raises(SystemExit, match="nowhere does not exist"):
        harness.main(argv)


def test_harness_ignores_non_images_and_hidden_files(harness: ModuleType, tmp_path: Path) -> None:
    data = small_dataset(tmp_path / "data")
    (data / "attacked" / "fgsm" / "notes.txt").write_text("x")
    (data / "attacked" / "fgsm" / ".x.png.ab12cd34.part").write_bytes(b"x")
    (data / "attacked" / ".DS_Store").write_bytes(b"x")
    pairs = harness.collect_pairs(data)
    assert [(p.attack, p.attacked.name) for p in pairs] == [("fgsm", "x.png")]


@pytest.mark.parametrize("which", ["attacked/fgsm", "reference"])
@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_harness_names_an_unreadable_image(
    harness: ModuleType, tmp_path: Path, which: str, damage: str
) -> None:
    data = small_dataset(tmp_path / "data")
    path = data / which / "x.png"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"garbage")
    pairs = harness.collect_pairs(data)
    identity = make_defense("none", torch.device("cpu"))
    with pytest.raises(ValueError, match=rf"cannot read image .*{which}/x\.png"):
        harness.evaluate(pairs, identity, lambda x: x.mean((1, 2, 3)), progress=False)


def test_atomic_writes_get_default_permissions(tmp_path: Path) -> None:
    import os

    from safetensors.torch import load_file

    from common.atomic_write import save_tensors, write_text_atomic

    umask = os.umask(0o022)
    try:
        save_image(torch.zeros(3, 4, 4), tmp_path / "a.png")
        write_text_atomic("{}", tmp_path / "b.json")
        save_tensors({"w": torch.arange(3.0)}, tmp_path / "c.safetensors", {"k": "v"})
        with staged_folder(tmp_path / "d") as staging:
            (staging / "sub").mkdir()
            (staging / "sub" / "owner-only").write_text("x")
            os.chmod(staging / "sub" / "owner-only", 0o600)  # as safetensors 0.8 writes
    finally:
        os.umask(umask)
    for name in ("a.png", "b.json", "c.safetensors", "d/sub/owner-only"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    assert torch.equal(load_file(tmp_path / "c.safetensors")["w"], torch.arange(3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.png",
        "b.json",
        "c.safetensors",
        "d",
    ]  # no temp left


def test_staged_folder_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "weights" / "w-v1"
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / ".w-v1.part").mkdir()  # left by a killed writer
    (tmp_path / "weights" / ".w-v1.part" / "stale").write_text("x")
    with staged_folder(target) as tmp:
        assert tmp == tmp_path / "weights" / ".w-v1.part" and not any(tmp.iterdir())
        (tmp / "a").write_text("1")
        assert not target.exists()
    assert [p.name for p in target.iterdir()] == ["a"]
    assert not (tmp_path / "weights" / ".w-v1.part").exists()

    with pytest.raises(RuntimeError, match="boom"), staged_folder(target) as tmp:
        (tmp / "b").write_text("2")
        raise RuntimeError("boom")
    assert [p.name for p in target.iterdir()] == ["a"]  # untouched
    assert not (tmp_path / "weights" / ".w-v1.part").exists()

    with staged_folder(target) as tmp:  # replace: a snapshot folder is overwritten
        (tmp / "c").write_text("3")
    assert [p.name for p in target.iterdir()] == ["c"]

    with pytest.raises(OSError), staged_folder(target, replace=False) as tmp:
        (tmp / "d").write_text("4")
    assert [p.name for p in target.iterdir()] == ["c"]  # never over a released folder
    assert not (tmp_path / "weights" / ".w-v1.part").exists()


def test_random_window_is_seeded_fits_and_refuses_what_cannot_fit() -> None:
    image = torch.zeros(3, 7, 5)
    corners = {random_window(image, 3, torch.Generator().manual_seed(s)) for s in range(300)}
    assert corners == {(top, left) for top in range(5) for left in range(3)}
    gen = torch.Generator().manual_seed(0)
    expected = (int(torch.randint(5, (), generator=gen)), int(torch.randint(3, (), generator=gen)))
    assert random_window(image, 3, torch.Generator().manual_seed(0)) == expected  # row, column
    assert random_window(image, 5, torch.Generator().manual_seed(0))[1] == 0
    for size in (0, 6):
        with pytest.raises(ValueError, match="does not fit"):
            random_window(image, size, torch.Generator())
