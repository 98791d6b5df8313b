"""scripts/purify.py, the folder plan behind it and the tiling of large images."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch

from common.image_io import load_image, save_image
from purifier.cli import main
from purifier.folder_plan import batches_by_size, check_folders, plan_folder
from purifier.tiling import edge_window, tile_spans, tiled_apply

FAST = ["--t-star", "10", "--steps", "2", "--seed", "0"]


@pytest.fixture(scope="module")
def weights(tiny_weights: Path) -> Path:
    return tiny_weights


pytestmark = pytest.mark.usefixtures("provisional_defaults")


def random_image(height: int, width: int, seed: int) -> torch.Tensor:
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """in/{a.png, b.jpg, broken.png, notes.txt, sub/c.png, sub/deep/d.bmp}."""
    root = tmp_path / "in"
    save_image(random_image(16, 16, 0), root / "a.png")
    save_image(random_image(16, 16, 1), root / "b.jpg")
    save_image(random_image(20, 12, 2), root / "sub" / "c.png")
    save_image(random_image(16, 16, 3), root / "sub" / "deep" / "d.bmp")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (root / "notes.txt").write_text("not an image")
    return root


def run(tree: Path, out: Path, weights: Path, *extra: str) -> int:
    return main([str(tree), str(out), "--weights", str(weights), *FAST, *extra])


def outputs(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# --- the command -----------------------------------------------------------------------------


def test_purifies_a_tree_keeping_names_and_skipping_bad_files(
    tree: Path, tmp_path: Path, weights: Path, caplog: pytest.LogCaptureFixture, capsys
) -> None:
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        code = run(tree, out, weights, "--batch-size", "2")
    assert code == 1  # broken.png failed; the rest went on
    assert outputs(out) == ["a.png", "b.png", "sub/c.png", "sub/deep/d.png"]
    for name, source in [("a.png", "a.png"), ("sub/c.png", "sub/c.png"), ("b.png", "b.jpg")]:
        purified, original = load_image(out / name), load_image(tree / source)
        assert purified.shape == original.shape
        assert not torch.equal(purified, original)
    warnings = caplog.text
    assert "broken.png" in warnings and "notes.txt" in warnings
    summary = capsys.readouterr().out
    assert "processed 4, skipped 0 (output exists), failed 1, ignored 1" in summary


def test_keep_format(tree: Path, tmp_path: Path, weights: Path) -> None:
    out = tmp_path / "out"
    run(tree, out, weights, "--keep-format")
    assert outputs(out) == ["a.png", "b.jpg", "sub/c.png", "sub/deep/d.bmp"]


def test_resume_skips_existing_outputs_unless_overwrite(
    tree: Path, tmp_path: Path, weights: Path, capsys
) -> None:
    out = tmp_path / "out"
    run(tree, out, weights)
    (out / "sub" / "c.png").unlink()
    kept = (out / "a.png").stat().st_mtime_ns
    capsys.readouterr()
    run(tree, out, weights)
    assert "processed 1, skipped 3 (output exists)" in capsys.readouterr().out
    assert (out / "sub" / "c.png").is_file()
    assert (out / "a.png").stat().st_mtime_ns == kept
    run(tree, out, weights, "--overwrite")
    assert "processed 4, skipped 0" in capsys.readouterr().out


def test_seed_makes_the_command_reproducible(tree: Path, tmp_path: Path, weights: Path) -> None:
    run(tree, tmp_path / "one", weights)
    run(tree, tmp_path / "two", weights)
    for name in ["a.png", "sub/c.png"]:
        assert torch.equal(load_image(tmp_path / "one" / name), load_image(tmp_path / "two" / name))


def test_seeded_noise_follows_the_relative_path_not_the_file_name(
    tmp_path: Path, weights: Path
) -> None:
    source = tmp_path / "in"
    for name in ("a.png", "sub/a.png", "other/a.png"):
        save_image(random_image(16, 16, 0), source / name)  # the same pixels three times
    assert run(source, tmp_path / "out", weights) == 0
    first, second = (load_image(tmp_path / "out" / n) for n in ("a.png", "sub/a.png"))
    assert not torch.equal(first, second)
    # the same relative path gets the same noise whatever folder it is purified from
    assert run(source / "sub", tmp_path / "alone", weights) == 0
    assert not torch.equal(load_image(tmp_path / "alone" / "a.png"), second)
    assert torch.equal(load_image(tmp_path / "alone" / "a.png"), first)


@pytest.mark.parametrize("where", ["same", "inside"])
def test_refuses_output_in_the_input_folder(
    tree: Path, weights: Path, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    out = tree if where == "same" else tree / "sub" / "purified"
    before = outputs(tree)
    assert run(tree, out, weights) == 2
    assert "output folder" in caplog.text
    assert outputs(tree) == before


def test_missing_weights_is_reported(tree: Path, tmp_path: Path, caplog) -> None:
    code = main([str(tree), str(tmp_path / "out"), "--weights", str(tmp_path / "none"), *FAST])
    assert code == 2
    assert "train_ddpm.py" in caplog.text
    assert not (tmp_path / "out").exists()


def test_altered_weights_are_reported(tree: Path, tmp_path: Path, weights: Path, caplog) -> None:
    copy = tmp_path / "ddpm-v1"
    copy.mkdir()
    for file in weights.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    (copy / "config.json").write_text("{}")
    assert run(tree, tmp_path / "out", copy) == 2
    assert "does not match its manifest" in caplog.text


def test_truncated_image_is_skipped_and_the_batch_goes_on(
    tmp_path: Path, weights: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "in"
    save_image(random_image(16, 16, 0), source / "a.png")
    save_image(random_image(16, 16, 1), source / "b.png")
    data = (source / "b.png").read_bytes()
    (source / "b.png").write_bytes(data[: len(data) // 2])  # header fine, pixels cut
    assert run(source, tmp_path / "out", weights, "--batch-size", "2") == 1
    assert outputs(tmp_path / "out") == ["a.png"]
    assert "b.png" in caplog.text


@pytest.mark.parametrize(
    "bad",
    [
        ["--batch-size", "0"],
        ["--tile", "-1"],
        ["--tile", "16", "--tile-overlap", "8"],
        ["--tile", "8", "--tile-overlap", "2"],
        ["--tile", "64", "--tile-overlap", "0"],
        ["--device", "cudaa"],
    ],
)
def test_bad_options_exit(tree: Path, tmp_path: Path, weights: Path, bad: list[str]) -> None:
    with pytest.raises(SystemExit):
        run(tree, tmp_path / "out", weights, *bad)


def test_bad_knob_is_reported(tree: Path, tmp_path: Path, weights: Path, caplog, capsys) -> None:
    with pytest.raises(SystemExit) as info:  # a count that cannot run: at parse time
        run(tree, tmp_path / "out", weights, "--ensemble", "0")
    assert info.value.code == 2 and "--ensemble: must be an integer >= 1" in capsys.readouterr().err
    assert run(tree, tmp_path / "out", weights, "--unsharp-amount", "-1") == 2  # the config's
    assert "unsharp_amount must be a finite number >= 0" in caplog.text
    assert not (tmp_path / "out").exists()


def test_tiled_run_keeps_sizes(tmp_path: Path, weights: Path) -> None:
    source = tmp_path / "in"
    save_image(random_image(40, 27, 5), source / "big.png")
    code = run(source, tmp_path / "out", weights, "--tile", "16", "--tile-overlap", "4")
    assert code == 0
    assert load_image(tmp_path / "out" / "big.png").shape == (3, 40, 27)


# --- the plan --------------------------------------------------------------------------------


def test_plan_never_writes_onto_an_input(tmp_path: Path) -> None:
    # in_dir inside out_dir: in/sub/x.png would be written to out/sub/x.png == in/x.png... here
    # out = tmp, in = tmp/sub, so in/sub/x.png -> tmp/sub/x.png, which is the input in/x.png.
    source = tmp_path / "sub"
    save_image(random_image(8, 8, 0), source / "x.png")
    save_image(random_image(8, 8, 1), source / "sub" / "x.png")
    plan = plan_folder(source, tmp_path)
    assert [job.source for job in plan.jobs] == [(source / "x.png").resolve()]
    assert len(plan.rejected) == 1 and "is an input file" in plan.rejected[0][1]


def test_plan_rejects_two_inputs_with_one_output(tmp_path: Path) -> None:
    source = tmp_path / "in"
    save_image(random_image(8, 8, 0), source / "a.jpg")
    save_image(random_image(8, 8, 1), source / "a.png")
    plan = plan_folder(source, tmp_path / "out")
    assert [job.source.name for job in plan.jobs] == ["a.jpg"]
    assert "already writes" in plan.rejected[0][1]
    assert len(plan_folder(source, tmp_path / "out", keep_format=True).jobs) == 2


def test_check_folders_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        check_folders(tmp_path / "missing", tmp_path / "out")
    source = tmp_path / "in"
    source.mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        check_folders(source, tmp_path / "file")
    with pytest.raises(ValueError, match="must differ"):
        check_folders(source, source / "sub" / "..")
    with pytest.raises(ValueError, match="inside the input folder"):
        check_folders(source, source / "a" / "b")
    assert check_folders(source, tmp_path / "out") == (
        source.resolve(),
        (tmp_path / "out").resolve(),
    )


def test_batches_group_same_sizes(tree: Path, tmp_path: Path) -> None:
    plan = plan_folder(tree, tmp_path / "out")
    batches, unreadable = batches_by_size(plan.jobs, batch_size=2)
    names = [[job.source.name for job in batch] for batch in batches]
    assert names == [["a.png", "b.jpg"], ["d.bmp"], ["c.png"]]
    assert [job.source.name for job, _ in unreadable] == ["broken.png"]
    with pytest.raises(ValueError, match="batch_size"):
        batches_by_size(plan.jobs, 0)


# --- tiling ----------------------------------------------------------------------------------


def test_tiling_refuses_what_it_cannot_tile() -> None:
    with pytest.raises(ValueError, match="length must be >= 1"):
        tile_spans(0, 512, 32)
    with pytest.raises(ValueError, match=r"expected \(B, C, H, W\)"):
        tiled_apply(torch.zeros(3, 40, 40), lambda x: x, 16, 4)
    with pytest.raises(ValueError, match=r"fn changed the tile shape"):
        tiled_apply(torch.zeros(1, 3, 40, 40), lambda x: x[..., 1:], 16, 4)


def test_tile_spans_pinned() -> None:
    assert tile_spans(1000, 512, 32) == [(0, 512), (244, 756), (488, 1000)]
    assert tile_spans(512, 512, 32) == [(0, 512)]
    assert tile_spans(100, 512, 32) == [(0, 100)]
    assert tile_spans(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]


@pytest.mark.parametrize("length", range(1, 80))
def test_tile_spans_cover_with_enough_overlap(length: int) -> None:
    spans = tile_spans(length, 16, 4)
    assert spans[0][0] == 0 and spans[-1][1] == length
    for (start, stop), (next_start, _) in zip(spans, spans[1:], strict=False):
        assert stop - start == 16
        assert stop - next_start >= 4


def test_edge_window_is_positive_and_complementary() -> None:
    window = edge_window(20, 6, ramp_start=True, ramp_stop=True)
    assert (window > 0).all() and (window <= 1).all()
    assert torch.equal(window[6:14], torch.ones(8, dtype=torch.float64))
    torch.testing.assert_close(window[:6] + window[:6].flip(0), torch.ones(6, dtype=torch.float64))
    assert torch.equal(edge_window(5, 2, False, False), torch.ones(5, dtype=torch.float64))


@pytest.mark.parametrize(("height", "width"), [(100, 70), (33, 33), (16, 50), (8, 8)])
def test_tiling_an_identity_reproduces_the_input_exactly(height: int, width: int) -> None:
    x = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    calls = []

    def identity(tile: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(tile.shape[-2:]))
        return tile.clone()

    out = tiled_apply(x, identity, tile=16, overlap=4)
    assert torch.equal(out, x)
    assert all(h <= 16 and w <= 16 for h, w in calls)
    pointwise = tiled_apply(x, torch.sqrt, tile=16, overlap=4)
    torch.testing.assert_close(pointwise, x.sqrt(), atol=1e-7, rtol=0)


def test_tiling_blends_without_seams() -> None:
    """Tiles get offsets 0 / 0.1 in a checkerboard (like independent noise per tile): the blend
    must ramp between neighbours instead of stepping. Without ramps (overlap 0) the step is
    large, so the test can fail."""

    def checkerboard(columns: int):
        count = iter(range(1000))

        def shifted(tile: torch.Tensor) -> torch.Tensor:
            k = next(count)
            return tile + 0.1 * ((k // columns + k % columns) % 2)

        return shifted

    def max_step(image: torch.Tensor) -> float:
        rows = (image[..., 1:, :] - image[..., :-1, :]).abs().max()
        cols = (image[..., :, 1:] - image[..., :, :-1]).abs().max()
        return float(max(rows, cols))

    flat = torch.full((1, 3, 64, 64), 0.5)
    assert len(tile_spans(64, 24, 8)) == 4 and len(tile_spans(64, 24, 0)) == 3
    blended = tiled_apply(flat, checkerboard(4), tile=24, overlap=8)
    hard = tiled_apply(flat, checkerboard(3), tile=24, overlap=0)
    ramp_slope = math.pi / (2 * 8)  # steepest step of a raised-cosine ramp 8 px wide
    assert max_step(hard) >= 0.05 - 1e-6
    assert max_step(blended) <= 0.1 * ramp_slope + 1e-6
    assert blended.min() >= 0.5 - 1e-6 and blended.max() <= 0.6 + 1e-6


@pytest.mark.parametrize(("tile", "overlap"), [(0, 0), (16, 8), (16, -1), (16.0, 2)])
def test_bad_tiling_raises(tile: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        tiled_apply(torch.rand(1, 3, 40, 40), lambda t: t, tile=tile, overlap=overlap)
