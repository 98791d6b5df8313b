"""``scripts/leave_one_attack_out.py``: the runs it starts, the table it reads back from their
manifests, resuming, and a real two-attack study on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from image_io import save_image
from scripts import leave_one_attack_out as loao
from tests.conftest import write_tiny_release


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


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--attacks", "fgsm"], "needs >= 2"),
        (["--attacks", "fgsm,nope"], "unknown"),
        (["--attacks", "fgsm,ifgsm", "--only", "uap"], "--only takes"),
        (["--max-steps", "0"], "--max-steps"),
    ],
)
def test_bad_options_are_refused(
    tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit):
        loao.parse_args(["--output-dir", str(tmp_path), *argv])
    assert message in capsys.readouterr().err


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
    argv = ["--output-dir", str(tmp_path / "study"), "--attacks", "fgsm,ifgsm"]
    argv += ["--init", str(write_tiny_release(tmp_path / "init")), "--max-steps", "1"]
    assert loao.main([*argv, "--", *tiny]) == 0
    rows = json.loads((tmp_path / "study" / "report.json").read_text())
    assert [row["attack"] for row in rows] == ["fgsm", "ifgsm"]
    assert all(row["ratio"] > 0 and row["undefended"] > 0 for row in rows)
    assert "held out (trained without it)" in (tmp_path / "study" / "report.md").read_text()
