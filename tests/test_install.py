"""An installed copy works on its own (issue 31): in a fresh venv, a non-editable
``pip install .`` then ``purify`` from another folder runs with the tuned defaults
(``purifier/defaults.json``) and the shipped weights; the repository's own ``import defense``
keeps working."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.paths import ROOT, WEIGHTS_DIR
from purifier.config import DEFAULTS_FILE
from purifier.weights import newest_release

TORCH = "torch==2.13.0"  # the CPU build from the local index; a bare `torch` pulls CUDA


def run(command: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, **kwargs)


def test_import_defense_from_the_repository() -> None:
    result = run([sys.executable, "-c", "import defense; print(defense.Defense.__name__)"], ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Defense"


def tracked_copy(target: Path) -> Path:
    """The repository's tracked and new (not ignored) files, copied: the build sees the
    working tree, never a stale build/ folder."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        source = ROOT / rel
        if source.is_file():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target / rel)
    return target


@pytest.mark.slow
def test_pip_install_then_purify_from_elsewhere(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("needs git to list the repository's files")
    source = tracked_copy(tmp_path / "source")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    for args in ([TORCH], [str(source)]):
        result = run([str(python), "-m", "pip", "install", "-q", *args], tmp_path, timeout=900)
        assert result.returncode == 0, result.stderr[-2000:]

    work = tmp_path / "elsewhere"
    (work / "in").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        pixels = (rng.random((40, 48, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(work / "in" / f"im{i}.png")
    purify = env_dir / "bin" / "purify"
    result = run([str(purify), "in", "out", "--device", "cpu", "--seed", "0"], work, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in (work / "out").iterdir()) == ["im0.png", "im1.png"]
    log = result.stderr
    # the tuned knobs, not the provisional ones
    for knob, value in json.loads(DEFAULTS_FILE.read_text()).items():
        assert f"{knob}={value!r}" in log, knob
    # the shipped weights, from the installed copy (not the repository)
    assert f"loaded denoiser {newest_release(WEIGHTS_DIR).name}" in log
    assert str(ROOT) not in log and "site-packages" in log

    # the benchmark machinery imports from the installed copy too
    check = "import evaluation.benchmarking, evaluation.tuning, model; print(model.__file__)"
    result = run([str(python), "-c", check], work)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "site-packages" in result.stdout
