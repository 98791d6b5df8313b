"""cli_options: the argparse value types and run_main shared by the scripts."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.cli_options import (
    device_name,
    markdown_report,
    non_negative_int,
    positive_float,
    positive_int,
    report_file,
    run_main,
)
from common.paths import ROOT
from purifier.options import noise_level
from scripts import convert_checkpoint


@pytest.mark.parametrize(
    ("parse", "good", "bad"),
    [
        (positive_int, {"1": 1, "12": 12}, ["0", "-3", "1.5", "x"]),
        (non_negative_int, {"0": 0, "7": 7}, ["-1", "2.0", ""]),
        (positive_float, {"0.5": 0.5, "3": 3.0}, ["0", "-1", "inf", "nan", "x"]),
        (noise_level, {"1": 1, "999": 999}, ["0", "1000", "60.5"]),
        (markdown_report, {"r.md": Path("r.md"), "r": Path("r")}, ["r.json", "a/R.JSON", "."]),
        (report_file, {"r.json": Path("r.json"), "no/such/r": Path("no/such/r")}, [".", "/"]),
        (device_name, {"cpu": "cpu"}, ["gpu", "cuda:x"]),
    ],
)
def test_value_types_take_what_they_promise_and_refuse_the_rest(parse, good, bad) -> None:
    for text, value in good.items():
        assert parse(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_device_name_refuses_cuda_on_a_cpu_build() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="sees no CUDA device"):
        device_name("cuda")


def test_run_main_turns_user_errors_into_one_line(capsys: pytest.CaptureFixture) -> None:
    def missing() -> int:
        raise FileNotFoundError("no such file: x.png")

    def bad() -> int:
        raise ValueError("crop 64 does not fit")

    for main, said in ((missing, "no such file: x.png"), (bad, "crop 64 does not fit")):
        with pytest.raises(SystemExit) as info:
            run_main(main, "tool.py")
        assert info.value.code == f"tool.py: error: {said}"  # exit status 1, message on stderr
    for returned, code in ((3, 3), (None, 0)):
        with pytest.raises(SystemExit) as info:
            run_main(lambda r=returned: r, "tool.py")
        assert info.value.code == code

    def bug() -> int:
        raise KeyError("a bug keeps its traceback")

    with pytest.raises(KeyError):
        run_main(bug, "tool.py")


def test_a_script_reports_a_missing_path_without_a_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "scripts/eval_detector.py", "--detector", str(tmp_path / "none")]
        + ["--clean", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("eval_detector.py: error: ")


def test_convert_checkpoint_reports_bad_sources(tmp_path: Path, capsys) -> None:
    (tmp_path / "text.pth").write_text("not a pickle")
    torch.save({"model": {}}, tmp_path / "partial.pth")
    cases = {
        "text.pth": "convert_checkpoint.py: error:",
        "partial.pth": "is not a Linearity checkpoint",
        "missing.pth": "No such file",
    }
    for name, message in cases.items():
        with pytest.raises(SystemExit) as info:
            convert_checkpoint.main([str(tmp_path / name), str(tmp_path / "out.pth"), "--trust"])
        assert info.value.code == 1 and message in capsys.readouterr().err
    assert not (tmp_path / "out.pth").exists()


@pytest.mark.parametrize(
    ("script", "flag"),
    [
        ("adaptive_eval", "--output"),
        ("adaptive_eval", "--json"),
        ("benchmark", "--markdown"),
        ("benchmark", "--json"),
        ("eval_denoiser", "--json"),
        ("eval_detector", "--output"),
        ("eval_metric", "--json"),
        ("tune", "--output"),
    ],
)
def test_report_options_refuse_a_folder_before_the_work(
    script: str, flag: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import importlib

    module = importlib.import_module(f"scripts.{script}")
    if not hasattr(module, "build_parser") and not hasattr(module, "parse_args"):
        module = importlib.import_module(module.main.__module__)  # a thin script's package
    parse = module.build_parser().parse_args if hasattr(module, "build_parser") else None
    parse = parse or module.parse_args
    with pytest.raises(SystemExit) as info:
        parse([flag, str(tmp_path)])
    assert info.value.code == 2
    assert f"{flag}: names a file to write" in capsys.readouterr().err
