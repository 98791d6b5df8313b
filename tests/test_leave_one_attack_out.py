"""``scripts/leave_one_attack_out.py``: the runs it starts, the table it reads back from their
manifests, resuming, and a real two-attack study on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common.image_io import save_image
from evaluation.benchmarking import json_ready
from tests.conftest import write_tiny_release, write_tiny_standin
from training import leave_one_attack_out as loao


def _fake_run(folder: Path, validation: dict, init_validation: dict | None = None) -> None:
    (folder / "out").mkdir(parents=True)
    training = {"validation": validation, "init_validation": init_validation or {}}
    (folder / "out" / "manifest.json").write_text(json.dumps({"training": training}))


def test_commands_train_without_the_held_out_attack_and_validate_on_it(tmp_path: Path) -> None:
    args = loao.parse_args(
        ["--output-dir", str(tmp_path), "--attacks", "fgsm,ifgsm,uap", "--max-steps", "40"]
        + ["--", "--crop", "32"]
    )
    assert args.only == ["all", "fgsm", "ifgsm", "uap"]
    held = loao.finetune_command(args, "ifgsm")
    assert held[held.index("--attacks") + 1] == "fgsm,uap"
    assert held[held.index("--val-attacks") + 1] == "ifgsm"
    assert held[held.index("--output") + 1] == str(tmp_path / "without-ifgsm" / "out")
    assert held[held.index("--val-every") + 1] == "40" and held[-2:] == ["--crop", "32"]
    everything = loao.finetune_command(args, "all")
    assert everything[everything.index("--attacks") + 1] == "fgsm,ifgsm,uap"
    assert everything[everything.index("--val-attacks") + 1] == "fgsm,ifgsm,uap"


def test_table_reads_finished_runs_and_leaves_missing_ones_empty(tmp_path: Path) -> None:
    _fake_run(
        tmp_path / "all",
        {"gain/fgsm": 4.0, "gain/ifgsm": 10.0},
        {"gain/fgsm": 6.0, "gain/ifgsm": 12.0},
    )
    _fake_run(tmp_path / "without-fgsm", {"undefended_gain": 50.0, "gain/fgsm": 9.0})
    rows = loao.study_table(tmp_path, ["fgsm", "ifgsm"])
    assert rows[0] == {
        "attack": "fgsm",
        "undefended": 50.0,
        "start": 6.0,
        "in_distribution": 4.0,
        "held_out": 9.0,
        "ratio": 2.25,
    }
    assert rows[1]["held_out"] is None and "ratio" not in rows[1]
    args = loao.parse_args(["--output-dir", str(tmp_path), "--attacks", "fgsm,ifgsm"])
    report = loao.markdown(rows, args)
    assert "| fgsm | 50.00 | 6.00 | 4.00 | 9.00 | 2.25 | ❌ |" in report
    assert "| ifgsm | – | 12.00 | 10.00 | – | – |  |" in report


def test_finished_runs_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_run(tmp_path / "all", {})
    started: list[list[str]] = []
    monkeypatch.setattr(loao.subprocess, "call", lambda cmd, **_: started.append(cmd) or 3)
    args = loao.parse_args(["--output-dir", str(tmp_path), "--attacks", "fgsm,ifgsm"])
    assert loao.run_study(args) == 2  # two runs started, both "failed" with exit 3
    assert [cmd[cmd.index("--val-attacks") + 1] for cmd in started] == ["fgsm", "ifgsm"]
    (tmp_path / "without-fgsm" / "checkpoints").mkdir()
    started.clear()
    args.only = ["fgsm"]
    loao.run_study(args)
    assert started[0][-2:] == ["--resume", "latest"]


def test_a_finished_run_made_with_other_options_stops_the_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "manifest.json").write_text("{}")  # a release folder, for check_inputs
    study = ["--output-dir", "study", "--attacks", "fgsm,ifgsm", "--init", "w"]
    args = loao.parse_args([*study, "--max-steps", "40", "--", "--crop", "32"])
    _fake_run(tmp_path / "study" / "without-ifgsm", {})
    with pytest.raises(SystemExit, match="records no fine-tune options"):
        loao.check_finished_runs(args)
    manifest = tmp_path / "study" / "without-ifgsm" / "out" / "manifest.json"
    options = json_ready(loao.run_options(args, "ifgsm"))
    options |= {"threads": 2, "val_every": 7, "init": str(tmp_path / "w")}  # same weights
    manifest.write_text(json.dumps({"training": {"options": options}}))
    loao.check_finished_runs(args)
    loao.check_finished_runs(loao.parse_args([*study, "--max-steps", "40", "--threads", "2",
                                              "--", "--crop", "32"]))  # fmt: skip
    for argv, differ in [
        (["--max-steps", "80", "--", "--crop", "32"], "max_steps: 40 there, 80 here"),
        (["--max-steps", "40", "--", "--crop", "64"], "crop: 32 there, 64 here"),
        (["--max-steps", "40", "--seed", "1", "--", "--crop", "32"], "seed: 0 there, 1 here"),
    ]:
        with pytest.raises(SystemExit, match=differ):
            loao.main([*study, *argv])
    other = loao.parse_args([*study, "--max-steps", "40", "--init", "v", "--", "--crop", "32"])
    with pytest.raises(SystemExit, match=r"without-ifgsm finished with other options \(init"):
        loao.check_finished_runs(other)


def _gain_rows(gains: dict[str, float], clean_shift: float = 0.0) -> dict:
    """Benchmark rows whose attacked shift equals the Gain, and the clean references' shift."""
    rows = [{"Attack": a, "Gain Score": g, "Score shift": g} for a, g in gains.items()]
    return {"rows": rows, "clean": {"Score shift": clean_shift}}


def test_score_benchmarks_finished_weights_and_reads_each_held_out_on_its_attack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study, data = tmp_path / "study", tmp_path / "tuning-set"
    for attack in ("fgsm", "ifgsm", "uap"):
        (data / "attacked" / attack).mkdir(parents=True)
    _fake_run(study / "all", {})
    _fake_run(study / "without-fgsm", {})
    _fake_run(study / "without-ifgsm", {})  # without-uap has not finished
    argv = ["--output-dir", str(study), "--attacks", "fgsm,ifgsm,uap,madc", "--threads", "2"]
    args = loao.parse_args([*argv, "--score", f"{data}=weights/m"])
    assert args.score == [(data, Path("weights/m"))]
    held, specs = loao.score_plan(args, data)
    assert held == ["fgsm", "ifgsm"]  # madc: not in the dataset; uap: not finished
    every = f"ddpm@{study / 'all' / 'out'}"
    without = {a: f"ddpm@{study / f'without-{a}' / 'out'}" for a in ("fgsm", "ifgsm")}
    assert specs == ["none", every, without["fgsm"], without["ifgsm"]]
    command = loao.score_command(args, data, Path("weights/m"), specs, tmp_path / "out")
    assert command[command.index("--defenses") + 1] == ",".join(specs)
    assert command[command.index("--metric") + 1] == "weights/m"
    assert command[command.index("--threads") + 1] == "2" and "--no-memory" in command

    benchmark = {
        "meta": {"attacks": 3},
        "defenses": {
            "none": _gain_rows({"fgsm": 60.0, "ifgsm": 150.0, "uap": 80.0}),
            every: _gain_rows({"fgsm": 10.0, "ifgsm": 8.0, "uap": 4.0}, clean_shift=-2.0),
            without["fgsm"]: _gain_rows({"fgsm": 25.0, "ifgsm": 8.0, "uap": 6.0}, -5.0),
            without["ifgsm"]: _gain_rows({"fgsm": 12.0, "ifgsm": 6.0, "uap": 4.0}, -1.0),
        },
    }
    folder = study / "score-tuning-set"
    folder.mkdir()
    (folder / "benchmark.json").write_text(json.dumps(benchmark))
    started: list[list[str]] = []
    monkeypatch.setattr(loao.subprocess, "call", lambda cmd, **_: started.append(cmd) or 0)
    assert loao.run_score(args, data, Path("weights/m")) == benchmark
    assert started == []  # same defenses: the finished benchmark is reused
    rows = loao.score_table(benchmark, study, args.attacks)
    assert rows == [
        # seen_ratio: on the attacks both trained on, (8/8 + 6/4) / 2 and (12/10 + 4/4) / 2;
        # surviving uplift: shift minus clean shift, 10 + 2 and 25 + 5, 8 + 2 and 6 + 1
        {"attack": "fgsm", "undefended": 60.0, "in_distribution": 10.0, "held_out": 25.0,
         "seen_ratio": 1.25, "uplift_in": 12.0, "uplift_held": 30.0, "uplift_ratio": 2.5,
         "ratio": 2.5},
        {"attack": "ifgsm", "undefended": 150.0, "in_distribution": 8.0, "held_out": 6.0,
         "seen_ratio": 1.1, "uplift_in": 10.0, "uplift_held": 7.0, "uplift_ratio": 0.7,
         "ratio": 0.75},
        {"attack": "uap", "undefended": 80.0, "in_distribution": 4.0, "held_out": None,
         "seen_ratio": None, "uplift_in": 6.0, "uplift_held": None},
    ]  # fmt: skip
    report = loao.score_markdown(rows, data, Path("weights/m"))
    assert "| fgsm | 60.00 | 10.00 | 25.00 | 2.50 | 1.25 | 12.00 | 30.00 | 2.50 | ❌ |" in report
    assert "| uap | 80.00 | 4.00 | – | – | – | 6.00 | – | – |  |" in report

    _fake_run(study / "without-uap", {})  # one more finished run: the benchmark is redone
    assert loao.run_score(args, data, Path("weights/m")) is None  # the fake run wrote nothing
    assert started[0][started[0].index("--defenses") + 1].endswith("without-uap/out")


def test_score_needs_the_all_run_and_an_attacked_folder(tmp_path: Path) -> None:
    args = loao.parse_args(["--output-dir", str(tmp_path / "study"), "--attacks", "fgsm,ifgsm"])
    assert loao.run_score(args, tmp_path / "data", Path("m")) is None
    _fake_run(tmp_path / "study" / "all", {})
    with pytest.raises(SystemExit, match="no attacked/ folder"):
        loao.run_score(args, tmp_path / "data", Path("m"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--attacks", "fgsm"], "needs >= 2"),
        (["--attacks", "fgsm,nope"], "unknown"),
        (["--attacks", "fgsm,ifgsm", "--only", "uap"], "--only takes"),
        (["--max-steps", "0"], "--max-steps"),
        (["--score", "runs/tuning-set"], "DATA_DIR=METRIC"),
        (["--score", "=weights/m"], "DATA_DIR=METRIC"),
    ],
)
def test_bad_options_are_refused(
    tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit):
        loao.parse_args(["--output-dir", str(tmp_path), *argv])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--init", "/no/such"], "--init /no/such: no manifest.json"),
        (["--metric-weight", "-1"], "loss weights must be >= 0"),
        (["--", "--crop", "0"], "--crop must be >= 1"),
        (["--score", "/no/data=weights/standin-metric-v1"], "--score: no attacked/ folder"),
        (["--score", "DATA=/no/metric"], "--score: no metric at /no/metric"),
    ],
)
def test_inputs_are_checked_before_any_fine_tune_starts(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    extra: list[str],
    message: str,
) -> None:
    started: list[list[str]] = []
    monkeypatch.setattr(loao.subprocess, "call", lambda cmd, **_: started.append(cmd) or 0)
    data = tmp_path / "data"
    (data / "attacked" / "fgsm").mkdir(parents=True)
    extra = [a.replace("DATA", str(data)) for a in extra]
    argv = ["--output-dir", str(tmp_path / "study"), "--attacks", "fgsm,ifgsm", *extra]
    with pytest.raises(SystemExit) as info:
        loao.main(argv)
    said = str(info.value) if info.value.code != 2 else capsys.readouterr().err  # argparse: 2
    assert message in said and started == []


def test_a_two_attack_study_end_to_end(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    for i in range(5):
        save_image(torch.rand(3, 40, 36, generator=gen), tmp_path / "clean" / f"img{i}.png")
    tiny = [
        "--train-dir", str(tmp_path / "clean"), "--crop", "32", "--prior-crop", "32",
        "--val-crop", "32", "--holdout", "2", "--batch-size", "2", "--prior-batch", "2",
        "--pool-size", "4", "--refresh", "2", "--mixed-precision", "no",
        "--max-attack-steps", "2",
    ]  # fmt: skip
    data = tmp_path / "attacked-set"  # competition layout, scored through benchmark.py
    for i in range(2):
        reference = torch.rand(3, 32, 32, generator=gen)
        save_image(reference, data / "reference" / f"r{i}.png")
        for attack in ("fgsm", "ifgsm", "uap"):
            attacked = (reference + 0.05 * torch.randn(3, 32, 32, generator=gen)).clamp(0, 1)
            save_image(attacked, data / "attacked" / attack / f"r{i}.png")
    metric = write_tiny_standin(tmp_path / "metric", bias=50.0)  # positive scores, as Gain needs
    argv = ["--output-dir", str(tmp_path / "study"), "--attacks", "fgsm,ifgsm"]
    argv += ["--init", str(write_tiny_release(tmp_path / "init")), "--max-steps", "1"]
    assert loao.main([*argv, "--score", f"{data}={metric}", "--", *tiny]) == 0
    rows = json.loads((tmp_path / "study" / "report.json").read_text())
    assert [row["attack"] for row in rows] == ["fgsm", "ifgsm"]
    assert all(row["ratio"] > 0 and row["undefended"] > 0 for row in rows)
    report = (tmp_path / "study" / "report.md").read_text()
    assert "held out (trained without it)" in report and "## Shipped Defense knobs" in report
    scored = json.loads((tmp_path / "study" / "score-attacked-set" / "table.json").read_text())
    assert [row["attack"] for row in scored] == ["fgsm", "ifgsm"]  # uap: not in the study
    assert all(row["ratio"] > 0 and row["undefended"] > 0 for row in scored)
