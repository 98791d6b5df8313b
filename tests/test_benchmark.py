"""scripts/benchmark.py and its machinery: one run on a tiny dataset agrees with test.py's
aggregate; targets, timing, subsets, capture, CLI errors; the diffpure registration."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_bench import ATTACKS, NAMES, ToyMetric, tiny_linearity, write_tiny_dataset

import defense
import purifier.config
from common.paths import ROOT
from defense import Defense
from defenses import ChainedDefense, make_defense
from defenses.classical import JpegDefense, ResizeDefense
from defenses.registry import DIFFPURE_KNOBS
from defenses.specs import (
    build_defense,
    defense_label,
    split_chain,
    split_defense_spec,
    split_knobs,
)
from evaluation import benchmark_cli, harness
from evaluation import benchmarking as benchmarking
from evaluation.benchmark_report import (
    baseline_summary_table,
    check_targets,
    records_from_json,
    render_markdown,
    short_description,
)
from evaluation.benchmarking import (
    SCORE_SHIFT,
    TIME_RATIO,
    CapturingDefense,
    DefenseRun,
    linearity_seconds,
    score_shift,
    select_pairs,
    spread,
    time_ratios,
)
from evaluation.harness import ImagePair, ImageRecord

DEFENSES = ("none", "blur", "resize", "ddpm", "diffpure")


pytestmark = pytest.mark.usefixtures("provisional_defaults")


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path) -> dict:
    """One CLI run: 2 attacks x 2 images, toy metric, tiny denoiser, DiffPure on 1 image."""
    root = tmp_path_factory.mktemp("bench")
    data = write_tiny_dataset(root / "data")
    out = root / "out"
    argv = [
        "--data-dir", str(data),
        "--defenses", ",".join(DEFENSES),
        "--subset-for", "diffpure=1",
        "--weights", str(tiny_weights),
        "--output-dir", str(out),
        "--markdown", str(root / "BENCHMARKS.md"),
        "--grid", str(root / "docs" / "grid.png"),
        "--linearity-repeats", "1",
        "--grid-rows", "2",
        "--grid-crop", "16",
        "--no-progress",
        "--no-memory",
    ]  # fmt: skip
    has_plot = _has_matplotlib()
    if not has_plot:
        argv.append("--no-grid")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(purifier.config, "DEFAULTS_FILE", root / "absent.json")
        mp.setattr(harness, "load_metric", lambda checkpoint_dir, device: ToyMetric())
        mp.setattr(benchmark_cli, "reference_model", tiny_linearity)
        assert benchmark_cli.main(argv) == 0
    return {
        "root": root,
        "data": data,
        "out": out,
        "markdown": (root / "BENCHMARKS.md").read_text(),
        "json": json.loads((out / "benchmark.json").read_text()),
        "has_plot": has_plot,
    }


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)):
        return (a is None or math.isnan(a)) and (b is None or math.isnan(b))
    return a == pytest.approx(b, rel=1e-12, abs=1e-12)


# --- one benchmark run ------------------------------------------------------------------------


def test_rows_agree_with_the_harness_aggregate(bench: dict) -> None:
    defenses = bench["json"]["defenses"]
    assert list(defenses) == list(DEFENSES)
    for name, entry in defenses.items():
        expected = harness.aggregate(records_from_json(entry["records"]))
        assert [row["Attack"] for row in entry["rows"]] == [*ATTACKS, "All Attacks"]
        for row, want in zip(entry["rows"], expected, strict=True):
            for column in harness.COLUMNS[1:]:
                assert _same(row[column], want[column]), (name, row["Attack"], column)
        clean = harness.aggregate(records_from_json(entry["clean_records"]))[-1]
        assert _same(entry["clean"]["Gain Score"], clean["Gain Score"])
        assert _same(entry["clean"]["Quality Score"], clean["Quality Score"])
        # the signed shift: |shift| <= Gain, and equal to it when every change has one sign
        records = records_from_json(entry["records"])
        assert _same(entry["rows"][-1][SCORE_SHIFT], score_shift(records))
        assert abs(entry["rows"][-1][SCORE_SHIFT]) <= entry["rows"][-1]["Gain Score"] + 1e-9
    assert bench["json"]["defenses"]["none"]["clean"][SCORE_SHIFT] == 0.0


def test_record_counts_subset_and_clean_inputs(bench: dict) -> None:
    defenses = bench["json"]["defenses"]
    for name in ("none", "blur", "resize", "ddpm"):
        assert len(defenses[name]["records"]) == len(ATTACKS) * len(NAMES)
        assert len(defenses[name]["clean_records"]) == len(NAMES)
        assert defenses[name]["subset"] is None
    diffpure = defenses["diffpure"]
    assert diffpure["subset"] == 1
    assert {(r["attack"], r["name"]) for r in diffpure["records"]} == {
        (a, NAMES[0]) for a in ATTACKS
    }
    assert [r["name"] for r in diffpure["clean_records"]] == [NAMES[0]]
    # The undefended copy of a clean reference is the reference: no gain, Quality 1.
    assert defenses["none"]["clean"]["Gain Score"] == 0.0
    assert defenses["none"]["clean"]["Quality Score"] == 1.0
    assert "DiffusionPurifier(t_star=99, steps=100" in diffpure["description"]


def test_time_ratios_are_seconds_over_linearity(bench: dict) -> None:
    meta = bench["json"]["meta"]
    assert list(meta["linearity_seconds"]) == ["32x32"]
    linearity = meta["linearity_seconds"]["32x32"]
    for entry in bench["json"]["defenses"].values():
        ratios = [r["time_ratio"] for r in entry["records"]]
        for record in entry["records"]:
            assert record["time_ratio"] == pytest.approx(record["seconds"] / linearity)
        assert entry["rows"][-1][TIME_RATIO] == pytest.approx(sum(ratios) / len(ratios))


def test_markdown_shows_the_json_numbers(bench: dict) -> None:
    text, data = bench["markdown"], bench["json"]
    assert text.startswith("# Benchmarks")
    assert "python scripts/benchmark.py --data-dir" in text
    assert f"Machine: {data['meta']['machine']['cores']} cores" in text
    for name, entry in data["defenses"].items():
        total, clean = entry["rows"][-1], entry["clean"]
        label = f"{name}*" if entry["subset"] else name
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| {label}: "))
        for value in (
            f"{total['Gain Score']:.2f}",
            f"{total['Quality Score']:.4f}",
            f"{clean['Gain Score']:.2f}",
            f"{total[SCORE_SHIFT]:.2f}",
            f"{clean[SCORE_SHIFT]:.2f}",
            f"{total[TIME_RATIO]:.3f}",
        ):
            assert f"| {value} |" in line, (name, value, line)
    assert "## Targets of issue 5" in text
    assert "`diffpure*` ran on a subset: 1 image(s) per attack" in text
    assert "## On the subset of `diffpure`" in text
    assert "- `ddpm` knobs from: provisional defaults" in text


def test_markdown_leads_with_the_differences_from_the_real_baseline(bench: dict) -> None:
    text, defenses = bench["markdown"], bench["json"]["defenses"]
    assert text.index("## Against the competition's baseline") < text.index("## All attacks")
    base = defenses["resize"]["rows"][-1]
    table = text[text.index("## Against the competition's baseline") : text.index("## All attacks")]
    line = next(ln for ln in table.splitlines() if ln.startswith("| ddpm |"))
    ours = defenses["ddpm"]["rows"][-1]
    gain = base["Gain Score"] - ours["Gain Score"]
    quality = ours["Quality Score"] - base["Quality Score"]
    assert f"| {gain:+.2f} | {quality:+.4f} |" in line
    assert "### SRCC vs baseline (positive = better)" in table


def test_baseline_summary_counts_the_metrics_won() -> None:
    runs = {
        "resize": _run("resize", 6.0, 0.70, 3.0, 0.02),
        "ddpm": _run("ddpm", 4.0, 0.75, 1.0, 0.4),
        "blur": _run("blur", 9.0, 0.65, 2.0, 0.02),
    }
    lines = baseline_summary_table(runs)
    ddpm = next(ln for ln in lines if ln.startswith("| ddpm |"))
    # Gain 6.05 -> 4.05 (+2.00), Quality +0.05, SRCC equal (1.0 for both): 2 of 3 won
    assert ddpm.startswith("| ddpm | +2.00 | +0.0500 | +0.0000 | 2/3 | 4.05 |")
    blur = next(ln for ln in lines if ln.startswith("| blur |"))
    assert blur.startswith("| blur | -3.00 | -0.0500 | +0.0000 | 0/3 |")
    assert lines[-1].startswith("| resize (the baseline) | 0 | 0 | 0 | – | 6.05 |")
    assert baseline_summary_table({"ddpm": runs["ddpm"]}) == ["(the baseline `resize` was not run)"]


def test_judges_score_every_defense_under_another_metric(tmp_path: Path) -> None:
    from metrics.linearity import IQAModel, TrunkSpec
    from metrics.standin import save_standin

    data = write_tiny_dataset(tmp_path / "data")
    torch.manual_seed(0)
    judge = IQAModel(TrunkSpec((1, 1, 1, 1), groups=2, width_per_group=16, stem_width=8)).eval()
    folder = save_standin(judge, [1.0] * 3, [50.0] * 3, tmp_path / "judge", epochs=0)
    out = tmp_path / "out"
    argv = ["--data-dir", str(data), "--defenses", "none,resize", "--output-dir", str(out),
            "--judge", str(folder), str(data), "--linearity-repeats", "1", "--no-grid",
            "--no-progress", "--no-memory"]  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(harness, "load_metric", lambda checkpoint_dir, device: ToyMetric())
        mp.setattr(benchmark_cli, "reference_model", tiny_linearity)
        assert benchmark_cli.main(argv) == 0
    text = (out / "BENCHMARKS.md").read_text()
    label = f"{folder} on `{data}` (4 images)"
    assert f"### Judge: {label}" in text
    judged = json.loads((out / "benchmark.json").read_text())["judges"][label]
    assert set(judged) == {"none", "resize"}
    with torch.no_grad():
        metric = benchmark_cli.MetricModel("cpu", folder)
        first = judged["none"]["records"][0]
        pair = next(
            p
            for p in harness.collect_pairs(data)
            if (p.attack, p.attacked.name) == (first["attack"], first["name"])
        )
        expected = float(metric(harness.load_image(pair.attacked)[None]))
    assert first["defense_score"] == pytest.approx(expected, rel=1e-5)


def test_targets_in_json_match_check_targets(bench: dict) -> None:
    defenses = bench["json"]["defenses"]
    assert defenses["none"]["targets"] == []
    names = [t["target"] for t in defenses["ddpm"]["targets"]]
    assert names == ["Gain (%)", "Quality", "SRCC", "Clean gain (%)", "Time / Linearity"]
    quality = defenses["ddpm"]["targets"][1]
    assert quality["threshold"] == pytest.approx(defenses["none"]["rows"][-1]["Quality Score"])
    assert quality["passed"] == (quality["value"] >= quality["threshold"])


def test_scores_csv_per_defense(bench: dict) -> None:
    for name, entry in bench["json"]["defenses"].items():
        with (bench["out"] / name / "scores.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert [r["Attack"] for r in rows] == [*ATTACKS, "All Attacks"]
        gain = float(rows[-1]["Gain Score"])
        assert gain == pytest.approx(entry["rows"][-1]["Gain Score"])


def test_grid_png(bench: dict) -> None:
    if not bench["has_plot"]:
        pytest.skip("matplotlib not installed")
    from PIL import Image

    grid = bench["root"] / "docs" / "grid.png"
    with Image.open(grid) as image:
        width, height = image.size
    assert width > height > 100
    assert "![reference, attacked and each defense's output](docs/grid.png)" in bench["markdown"]


def test_default_outputs_stay_in_the_output_dir(tmp_path: Path) -> None:
    """Without --markdown/--grid a run writes only under --output-dir: the repository's
    BENCHMARKS.md and docs/benchmark_grid.png are never touched by an experiment."""
    data = write_tiny_dataset(tmp_path / "data")
    out = tmp_path / "out"
    repo_files = [ROOT / "BENCHMARKS.md", ROOT / "docs" / "benchmark_grid.png"]
    before = [(p.stat().st_mtime_ns if p.exists() else None) for p in repo_files]
    argv = ["--data-dir", str(data), "--defenses", "none,blur", "--output-dir", str(out),
            "--linearity-repeats", "1", "--grid-rows", "2", "--grid-crop", "16",
            "--no-progress", "--no-memory"]  # fmt: skip
    has_plot = _has_matplotlib()
    if not has_plot:
        argv.append("--no-grid")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(harness, "load_metric", lambda checkpoint_dir, device: ToyMetric())
        mp.setattr(benchmark_cli, "reference_model", tiny_linearity)
        assert benchmark_cli.main(argv) == 0
    assert [(p.stat().st_mtime_ns if p.exists() else None) for p in repo_files] == before
    expected = {"BENCHMARKS.md", "benchmark.json", "none", "blur"}
    if has_plot:
        expected.add("benchmark_grid.png")
        link = "![reference, attacked and each defense's output](benchmark_grid.png)"
        assert link in (out / "BENCHMARKS.md").read_text()
    assert {p.name for p in out.iterdir()} == expected


# --- pieces -----------------------------------------------------------------------------------


def _record(
    attack: str, name: str, gain: float, quality: float, seconds: float = 1.0, source: float = 50
) -> ImageRecord:
    return ImageRecord(
        attack=attack,
        name=name,
        source_score=source,
        defense_score=source * (1 + gain / 100),
        attacked_score=60.0,
        psnr=quality * 80,
        ssim=quality,
        quality=quality,
        gain=gain,
        seconds=seconds,
    )


def _run(name: str, gain: float, quality: float, clean_gain: float, ratio: float) -> DefenseRun:
    records = [
        _record(attack, image, gain + 0.1 * i, quality, source=40.0 + 10 * i)
        for attack in ATTACKS
        for i, image in enumerate(NAMES)
    ]
    clean = [_record("clean", image, clean_gain, 0.9) for image in NAMES]
    return DefenseRun(
        name, name, name, records, [ratio] * len(records), clean, [ratio] * len(clean)
    )


def test_check_targets_pinned() -> None:
    runs = {
        "none": _run("none", 20.0, 0.80, 0.0, 0.01),
        "resize": _run("resize", 6.0, 0.70, 3.0, 0.02),
        "blur": _run("blur", 9.0, 0.75, 2.0, 0.02),
        "ddpm": _run("ddpm", 1.5, 0.85, 1.0, 0.4),
        "slow": _run("slow", 2.5, 0.79, 2.5, 1.2),
    }
    good = {c.target: c for c in check_targets(runs, "ddpm")}
    assert good["Gain (%)"].threshold == pytest.approx(6.05 / 3)  # resize: mean gain 6.05
    assert good["Gain (%)"].passed and good["Gain (%)"].value == pytest.approx(1.55)
    assert good["Gain (%)"].note == "min(3 %, resize 6.05 / 3)"
    assert good["Quality"].passed and good["Quality"].threshold == pytest.approx(0.80)
    assert good["SRCC"].passed and good["SRCC"].value == pytest.approx(1.0)
    assert good["Clean gain (%)"].passed and good["Time / Linearity"].passed
    assert good["Time / Linearity"].note == "goal 0.5x met"
    bad = {c.target: c for c in check_targets(runs, "slow")}
    assert [bad[t].passed for t in bad] == [False, False, True, False, False]


def test_gain_limit_is_three_percent_when_classical_defenses_are_strong() -> None:
    runs = {"resize": _run("resize", 30.0, 0.7, 0, 0.1), "ddpm": _run("ddpm", 2.9, 0.9, 0, 0.1)}
    gain = check_targets(runs, "ddpm")[0]
    assert gain.threshold == 3.0 and gain.passed
    assert check_targets(runs, "ddpm")[1].note == "no none run"


def test_subset_run_is_compared_on_its_own_images() -> None:
    full = _run("resize", 6.0, 0.7, 3.0, 0.02)
    sub = _run("diffpure", 1.0, 0.9, 0.5, 50.0)
    keep = [i for i, r in enumerate(sub.records) if r.name == NAMES[1]]
    sub.records = [sub.records[i] for i in keep]
    sub.ratios = [sub.ratios[i] for i in keep]
    checks = check_targets({"resize": full, "diffpure": sub}, "diffpure")
    assert checks[0].threshold == pytest.approx(6.1 / 3)  # resize on img1 only


def test_spread_and_select_pairs() -> None:
    assert spread(list(range(10)), 3) == [0, 3, 6]
    assert spread(list(range(4)), None) == [0, 1, 2, 3]
    assert spread(list(range(4)), 9) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="count"):
        spread([1, 2, 3], 0)
    pairs = [ImagePair(a, Path(f"/x/{a}/{n}"), Path(f"/r/{n}")) for a in ATTACKS for n in "abcd"]
    kept = select_pairs(pairs, 2)
    assert [(p.attack, p.attacked.name) for p in kept] == [
        ("attack_a", "a"), ("attack_a", "c"), ("attack_b", "a"), ("attack_b", "c"),
    ]  # fmt: skip
    clean = benchmarking.clean_pairs(kept)
    assert [(p.attack, p.attacked, p.reference) for p in clean] == [
        ("clean", Path("/r/a"), Path("/r/a")),
        ("clean", Path("/r/c"), Path("/r/c")),
    ]


def test_time_ratios_need_a_timing_per_size(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "d")
    pairs = harness.collect_pairs(data)
    records = [_record(p.attack, p.attacked.name, 1.0, 0.9, seconds=0.5) for p in pairs]
    assert time_ratios(records, pairs, {(32, 32): 0.25}) == [2.0] * len(pairs)
    with pytest.raises(ValueError, match="no Linearity timing for 32x32"):
        time_ratios(records, pairs, {(16, 16): 1.0})


def test_linearity_seconds_per_size() -> None:
    seconds = linearity_seconds([(32, 40), (32, 40), (24, 24)], tiny_linearity(), repeats=1)
    assert list(seconds) == [(24, 24), (32, 40)]
    assert all(s > 0 for s in seconds.values())
    with pytest.raises(ValueError, match="repeats"):
        linearity_seconds([(8, 8)], tiny_linearity(), repeats=0)


def test_capturing_defense_keeps_outputs_of_chosen_inputs() -> None:
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    wrapped = CapturingDefense(make_defense("blur"), {"second": images[1].clone()})
    out = wrapped.apply_defense(images)
    assert list(wrapped.captured) == ["second"]
    assert torch.equal(wrapped.captured["second"], out[1])
    assert repr(wrapped) == repr(make_defense("blur"))


def test_render_markdown_without_grid_and_short_descriptions() -> None:
    runs = {"none": _run("none", 20, 0.8, 0, 0.01), "ddpm": _run("ddpm", 1, 0.9, 0.5, 0.3)}
    meta = {
        "command": "python scripts/benchmark.py",
        "date": "2025-01-01 00:00 UTC",
        "machine": benchmarking.machine_info(),
        "device": "cpu",
        "data_dir": "d",
        "attacks": 2,
        "images_per_attack": "2",
        "metric": "toy",
        "seed": 0,
        "batch_size": 1,
        "linearity_seconds": {"32x32": 0.5},
    }
    text = render_markdown(runs, meta)
    assert "## Examples" not in text and "32x32: 0.500 s" in text
    for native, words in ((True, "CPU with native bfloat16"), (False, "CPU without native")):
        machine = {**meta["machine"], "native_bfloat16": native}
        assert words in render_markdown(runs, {**meta, "machine": machine})
    older = {k: v for k, v in meta["machine"].items() if k != "native_bfloat16"}
    assert "bfloat16" not in render_markdown(runs, {**meta, "machine": older})
    long = "X(timesteps=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0])"
    assert short_description(long) == "X(timesteps=[9, 8, 7, ..., 0] (10 steps))"
    assert short_description("X(timesteps=[60, 30])") == "X(timesteps=[60, 30])"


# --- command line -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("specs", "message"),
    [(["diffpure"], "NAME=N"), (["diffpure=0"], ">= 1"), (["=3"], "NAME=N"), (["x=y"], ">= 1")],
)
def test_bad_subsets(specs: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        benchmark_cli.parse_subsets(specs)


def test_subset_parsing() -> None:
    assert benchmark_cli.parse_subsets(["diffpure=3", "ddpm=all"]) == {"diffpure": 3, "ddpm": None}
    assert benchmark_cli.parse_defenses("none, blur,none") == ["none", "blur"]
    with pytest.raises(ValueError, match="unknown or no defenses.*nope"):
        benchmark_cli.parse_defenses("none,nope")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--limit", "0"], "--limit must be >= 1"),
        (["--defenses", "blur", "--subset-for", "blur=x"], "integer >= 1"),
        (["--defenses", "bogus"], "unknown or no defenses"),
    ],
)
def test_cli_rejects_bad_arguments(tmp_path: Path, extra: list[str], message: str) -> None:
    data = write_tiny_dataset(tmp_path / "d")
    argv = ["--data-dir", str(data), "--no-grid", "--output-dir", str(tmp_path / "o"), *extra]
    with pytest.raises(SystemExit, match=message):
        benchmark_cli.main(argv)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "extra", [["--grid-crop", "-5"], ["--grid-rows", "x"], ["--threads", "0"], ["--device", "foo"]]
)
def test_cli_usage_errors_come_before_any_work(
    tmp_path: Path, extra: list[str], capsys: pytest.CaptureFixture
) -> None:
    data = write_tiny_dataset(tmp_path / "d")
    with pytest.raises(SystemExit) as info:
        benchmark_cli.main(["--data-dir", str(data), "--output-dir", str(tmp_path / "o"), *extra])
    assert info.value.code == 2 and f"argument {extra[0]}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_names_the_command_for_a_missing_public_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(benchmark_cli, "DEFAULT_DATA_DIR", tmp_path / "public-set")
    with pytest.raises(SystemExit, match="make_dataset.py runs/public-set"):
        benchmark_cli.main(["--no-grid"])


def test_script_runs_as_a_file() -> None:
    done = subprocess.run(
        [sys.executable, "scripts/benchmark.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "--subset-for" in done.stdout


# --- the diffpure registration ----------------------------------------------------------------


def test_diffpure_is_registered_with_the_published_chain(
    tiny_weights: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    defaults = tmp_path / "defaults.json"
    defaults.write_text(json.dumps({"t_star": 30, "steps": 3, "unsharp_amount": 0.5}))
    monkeypatch.setattr(purifier.config, "DEFAULTS_FILE", defaults)
    monkeypatch.setattr(defense, "WEIGHTS_DIR", tiny_weights.parent)
    built = make_defense("diffpure", "cpu")
    assert isinstance(built, Defense) and built.weights == tiny_weights
    assert built.purifier.timesteps == list(range(99, -1, -1))  # t* = 100 steps, all kept
    assert {k: getattr(built.config, k) for k in DIFFPURE_KNOBS} == DIFFPURE_KNOBS
    assert make_defense("ddpm", "cpu").config.t_star == 30  # the tuned one reads defaults


def test_defense_specs_name_other_weights(tiny_weights: Path) -> None:
    assert split_defense_spec("jpeg") == ("jpeg", None)
    assert split_defense_spec(f"ddpm@{tiny_weights}") == ("ddpm", tiny_weights)
    name, folder = split_defense_spec("ddpm@ddpm-v1")  # looked up under weights/
    assert name == "ddpm" and folder == Path(benchmark_cli.ROOT) / "weights" / "ddpm-v1"
    assert defense_label(f"ddpm@{tiny_weights}") == "ours (defense.Defense), weights ddpm-v1"
    defense = build_defense(f"diffpure@{tiny_weights}", "cpu")
    assert defense.purifier.config.steps == 100
    for bad, message in (
        ("jpeg@ddpm-v1", "only ddpm"),
        ("ddpm@", "only ddpm"),
        ("ddpm@no-such-weights", "no weights folder"),
    ):
        with pytest.raises(ValueError, match=message):
            split_defense_spec(bad)
    with pytest.raises(ValueError, match="no weights folder"):
        benchmark_cli.parse_defenses("none,ddpm@no-such-weights")


def test_defense_specs_change_knobs(tiny_weights: Path) -> None:
    spec = f"ddpm@{tiny_weights}:t_star=30:steps=3:sampler=ddpm:gate=0"
    assert split_knobs(spec) == (
        f"ddpm@{tiny_weights}",
        {"t_star": 30, "steps": 3, "sampler": "ddpm", "gate": 0},
    )
    assert split_defense_spec(spec) == ("ddpm", tiny_weights)
    assert defense_label("ddpm:gate=0.5") == "ours (defense.Defense), gate=0.5"
    built = build_defense(spec, "cpu")
    assert (built.config.t_star, built.config.steps, built.purifier.timesteps) == (
        30, 3, [30, 20, 9],
    )  # fmt: skip
    assert benchmark_cli.parse_defenses("ddpm,ddpm:gate=0") == ["ddpm", "ddpm:gate=0"]
    for bad, message in (
        ("jpeg:gate=0", r"jpeg takes no knob\(s\) \['gate'\]; its knobs: \['quality'\]"),
        ("median:size=5", r"median takes no knob\(s\) \['size'\]; its knobs: none"),
        ("diffpure:seed=1", r"diffpure takes no knob\(s\) \['seed'\]; its knobs: none"),
        ("nope:x=1", "unknown defense 'nope'"),
        ("ddpm:gate", "name=value"),
        ("ddpm:=1", "name=value"),
        ("ddpm:colour=1", "unknown purifier knob"),
    ):
        with pytest.raises(ValueError, match=message):
            split_knobs(bad)
    with pytest.raises(ValueError, match="t_star"):
        build_defense("ddpm:t_star=0", "cpu", weights=tiny_weights)  # values checked on build


def test_defense_specs_set_a_baselines_own_option() -> None:
    assert split_knobs("jpeg:quality=75") == ("jpeg", {"quality": 75})
    assert defense_label("jpeg:quality=75") == "jpeg, quality=75"
    assert defense_label("resize:scale=0.75") == "resize, scale=0.75"
    assert defense_label("jpeg") == "JPEG q50"
    assert benchmark_cli.parse_defenses("jpeg,jpeg:quality=90") == ["jpeg", "jpeg:quality=90"]
    built = build_defense("resize:scale=0.75+jpeg:quality=90", "cpu")
    assert isinstance(built, ChainedDefense)
    resize, jpeg = built.parts
    assert (resize.scale, jpeg.quality) == (0.75, 90)
    x = torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        built.apply_defense(x),
        JpegDefense(quality=90).apply_defense(ResizeDefense(scale=0.75).apply_defense(x)),
        rtol=0,
        atol=0,
    )
    with pytest.raises(ValueError, match="JPEG quality must be an int"):
        build_defense("jpeg:quality=200", "cpu")  # values checked on build


def test_defense_specs_chain_defenses(tiny_weights: Path) -> None:
    spec = f"jpeg+ddpm@{tiny_weights}:t_star=30:gate=0"
    assert split_chain(spec) == ["jpeg", f"ddpm@{tiny_weights}:t_star=30:gate=0"]
    assert split_chain("ddpm") == ["ddpm"]
    assert defense_label("jpeg+ddpm:gate=0") == "JPEG q50, then ours (defense.Defense), gate=0"
    built = build_defense(spec, "cpu", seed=3)
    assert isinstance(built, ChainedDefense)
    jpeg, ddpm = built.parts
    assert repr(jpeg) == repr(make_defense("jpeg")) and ddpm.config.t_star == 30
    x = torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(0))
    expected = build_defense(spec.partition("+")[2], "cpu", seed=3).apply_defense(
        make_defense("jpeg").apply_defense(x)
    )
    torch.testing.assert_close(built.apply_defense(x), expected, rtol=0, atol=0)
    assert benchmark_cli.parse_defenses("jpeg+ddpm,ddpm") == ["jpeg+ddpm", "ddpm"]
    for bad, message in (
        ("jpeg+", "no empty part"),
        ("+ddpm", "no empty part"),
        ("jpeg+nope", "unknown or no defenses"),
        ("jpeg+ddpm@no-such-weights", "no weights folder"),
    ):
        with pytest.raises(ValueError, match=message):
            benchmark_cli.parse_defenses(bad)
    with pytest.raises(ValueError, match="at least two"):
        ChainedDefense([make_defense("jpeg")])
