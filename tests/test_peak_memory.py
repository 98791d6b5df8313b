"""scripts/peak_memory.py (issue 6, part 6): peak RSS of a fresh purifying process, on a small
image with the tiny denoiser; the benchmark's Memory section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from evaluation import benchmark_cli, peak_memory
from evaluation.benchmark_report import render_markdown

FIELDS = {
    "mode",
    "height",
    "width",
    "pixels",
    "peak_rss_bytes",
    "peak_rss_gib",
    "baseline_rss_gib",
    "seconds",
    "target_gib",
    "within_target",
    "tile",
    "overlap",
    "threads",
    "seed",
    "weights",
    "config",
    "torch",
}


@pytest.fixture(scope="module")
def measured(tiny_weights: Path) -> dict[str, dict]:
    """Both modes on a 48 x 64 image; the purify CLI tiles it into 32 px tiles."""
    common = {"weights": tiny_weights, "t_star": 20, "steps": 2, "threads": 1}
    return {
        "defense": peak_memory.measure_peak_memory(
            "defense", 48, 64, precision="float32", **common
        ),
        "purify": peak_memory.measure_peak_memory(
            "purify", 48, 64, tile=32, overlap=4, precision="bfloat16", **common
        ),
    }


@pytest.mark.parametrize("mode", peak_memory.MODES)
def test_measurement_fields_and_plausible_numbers(measured: dict[str, dict], mode: str) -> None:
    result = measured[mode]
    assert set(result) == FIELDS
    assert result["mode"] == mode and (result["height"], result["width"]) == (48, 64)
    assert result["pixels"] == 48 * 64 and result["threads"] == 1
    # A Python process with torch and the tiny model: tens of MB, far below the target.
    assert 30 * 2**20 < result["peak_rss_bytes"] < 2 * 2**30
    assert result["peak_rss_gib"] == result["peak_rss_bytes"] / 2**30
    assert 0 < result["baseline_rss_gib"] <= result["peak_rss_gib"]
    assert 0 < result["seconds"] < 60
    assert result["within_target"] and result["target_gib"] == 4.0
    assert result["config"]["t_star"] == 20 and result["config"]["steps"] == 2
    assert result["weights"].endswith("ddpm-v1")


def test_the_precision_reaches_both_paths(measured: dict[str, dict]) -> None:
    assert measured["defense"]["config"]["precision"] == "float32"
    assert measured["purify"]["config"]["precision"] == "bfloat16"


def test_the_purify_path_reports_its_tiling(measured: dict[str, dict]) -> None:
    assert (measured["purify"]["tile"], measured["purify"]["overlap"]) == (32, 4)
    assert measured["defense"]["tile"] is None


def test_smooth_image_is_seeded_smooth_and_in_range() -> None:
    a, b = peak_memory.smooth_image(30, 40, seed=1), peak_memory.smooth_image(30, 40, seed=1)
    assert a.shape == (1, 3, 30, 40) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, peak_memory.smooth_image(30, 40, seed=2))
    step = (a[..., 1:] - a[..., :-1]).abs().mean()
    assert step < 0.05  # neighbouring pixels differ little, unlike uniform noise (~0.33)


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        peak_memory.measure_peak_memory("tiled")
    with pytest.raises(ValueError, match="height must be an integer >= 1"):
        peak_memory.measure_peak_memory("defense", 0, 10)
    with pytest.raises(ValueError, match="tile/overlap apply to mode 'purify' only"):
        peak_memory.measure_peak_memory("defense", 8, 8, tile=32)
    with pytest.raises(SystemExit) as info:
        peak_memory.main(["--height", "0"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:  # the defense mode has no tiling: not ignored
        peak_memory.main(["--mode", "defense", "--tile", "32"])
    assert info.value.code == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--t-star", "0"], "--t-star"),
        (["--steps", "0"], "--steps"),
        (["--precision", "half"], "precision"),
        (["--weights", "no/such/folder"], "does not exist"),
        (["--mode", "purify", "--tile", "8"], "--tile must be 0"),
        (["--mode", "purify", "--tile", "64", "--tile-overlap", "40"], "less than half"),
        (["--timeout", "0"], "--timeout"),
        (["--json", "."], "names a file to write"),
    ],
)
def test_knobs_the_subprocess_would_refuse_are_refused_before_it_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, argv: list, message: str
) -> None:
    def never(*args: object, **kwargs: object) -> dict:
        raise AssertionError("no measurement may start")

    monkeypatch.setattr(peak_memory, "measure_peak_memory", never)
    with pytest.raises(SystemExit) as info:
        peak_memory.main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_failing_subprocess_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    crash = tmp_path / "crash.py"
    crash.write_text("import sys\nsys.exit('MissingWeightsError: no weights')\n")
    monkeypatch.setattr(peak_memory, "SCRIPT", crash)
    with pytest.raises(RuntimeError, match=r"\(defense\) failed with exit code 1: Missing"):
        peak_memory.measure_peak_memory("defense", 8, 8)
    (failed,) = [
        r for r in peak_memory.benchmark_memory(height=8, width=8) if r["mode"] == "purify"
    ]
    assert failed["error"].startswith("peak-memory run (purify) failed")
    assert "failed: peak-memory run (purify)" in "\n".join(peak_memory.memory_markdown([failed]))


def test_cli_writes_json(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    seen = []

    def fake(mode: str, height: int, width: int, **options: object) -> dict:
        seen.append((mode, height, width, options))
        return {"mode": mode, "pixels": height * width}

    monkeypatch.setattr(peak_memory, "measure_peak_memory", fake)
    weights = tmp_path / "w"
    weights.mkdir()
    argv = ["--height", "8", "--width", "12", "--weights", str(weights), "--tile", "96"]
    assert peak_memory.main([*argv, "--json", str(tmp_path / "m.json")]) == 0
    results = json.loads((tmp_path / "m.json").read_text())
    assert results == [{"mode": "defense", "pixels": 96}, {"mode": "purify", "pixels": 96}]
    assert json.loads(capsys.readouterr().out) == results
    assert "tile" not in seen[0][3] and seen[1][3]["tile"] == 96
    assert seen[0][3]["weights"] == weights and seen[0][3]["threads"] == 1


def test_memory_section_in_the_benchmark_markdown(measured: dict[str, dict]) -> None:
    results = [measured["defense"], {"mode": "purify", "height": 3, "width": 4, "error": "boom"}]
    lines = peak_memory.memory_markdown(results)
    assert lines[0] == "## Memory"
    row = next(line for line in lines if line.startswith("| `Defense.apply_defense`"))
    assert f"{measured['defense']['peak_rss_gib']:.2f}" in row and "✅ <= 4 GiB" in row
    assert "| `scripts/purify.py` | 4x3 | failed: boom |" in "\n".join(lines)


def test_the_benchmark_runs_the_measurement_unless_told_not_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stub = [{"mode": "defense", "height": 3, "width": 4, "error": "stub"}]
    calls = []

    def fake(weights: Path | None, threads: int) -> list[dict]:
        calls.append((weights, threads))
        return stub

    monkeypatch.setattr(benchmark_cli, "benchmark_memory", fake)
    parse = benchmark_cli.build_parser().parse_args
    assert benchmark_cli.memory_figures(parse(["--threads", "2", "--weights", "w"])) is stub
    assert benchmark_cli.memory_figures(parse(["--no-memory"])) is None
    assert calls == [(Path("w"), 2)]
    assert "## Memory" in "\n".join(_markdown_with({"memory": stub}))
    assert "## Memory" not in "\n".join(_markdown_with({}))


def _markdown_with(extra: dict) -> list[str]:
    meta = {
        "command": "c",
        "date": "d",
        "machine": {"cores": 2, "processor": "p", "torch_threads": 1, "platform": "x"}
        | {"torch": "t"},
        "device": "cpu",
        "data_dir": "data",
        "attacks": 0,
        "images_per_attack": "0",
        "metric": "m",
        "seed": 0,
        "batch_size": 1,
        "linearity_seconds": {},
        **extra,
    }
    return render_markdown({}, meta).splitlines()
