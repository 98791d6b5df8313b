"""notebooks/quickstart.ipynb: generated and executed by scripts/build_notebook.py, valid
nbformat 4 with its outputs stored (the scores and the picture), no test doubles in its cells,
and its code cells run: as they are (shipped stand-in metric, denoiser and defaults) and with a
tiny metric and denoiser patched in from outside."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

import defense
import model
import purifier.config
from metrics.linearity import IMAGENET_MEAN, IMAGENET_STD, IQAModel, TrunkSpec
from scripts.build_notebook import (
    NOTEBOOK,
    build_notebook,
    check,
    code_cells,
    main,
    notebook_text,
    without_outputs,
)


class TinyMetric(torch.nn.Module):
    """``MetricModel``'s interface on a tiny random Linearity network."""

    name = "tiny"

    def __init__(self, device: str = "cpu", model_path: str | None = None) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            spec = TrunkSpec((1, 1, 1, 1), groups=8, width_per_group=4, stem_width=32)
            self.model = IQAModel(spec).eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)[-1] * 10 + 50


def stored() -> dict:
    return json.loads(NOTEBOOK.read_text())


def test_notebook_cells_are_what_the_generator_writes(tmp_path: Path) -> None:
    assert without_outputs(stored()) == build_notebook()
    assert check(NOTEBOOK) is None and main(["--check"]) == 0
    stale = tmp_path / "stale.ipynb"
    stale.write_text("{}")
    assert main(["--check", "--output", str(stale)]) == 1
    stale.write_text(notebook_text(build_notebook()))  # the right cells, never run
    assert "not executed" in check(stale)


def test_notebook_is_nbformat_4_with_its_outputs_stored() -> None:
    notebook = stored()
    assert (notebook["nbformat"], notebook["nbformat_minor"]) == (4, 5)
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    ids = [cell["id"] for cell in notebook["cells"]]
    assert len(ids) == len(set(ids))
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert len(code) == 6
    assert [cell["execution_count"] for cell in code] == list(range(1, 7))
    for cell in notebook["cells"]:
        assert isinstance(cell["source"], list) and cell["metadata"] == {}
    last = code[-1]["outputs"]
    text = "".join(line for o in last if o["output_type"] == "stream" for line in o["text"])
    for name in ("clean", "attacked", "purified"):
        assert f"{name}: f=" in text
    assert any("image/png" in o.get("data", {}) for o in last)  # the picture
    everything = json.dumps(notebook)
    assert str(Path.home()) not in everything and "/work/" not in everything  # no local paths


def test_cells_hold_no_test_doubles() -> None:
    for source in code_cells(stored()):
        for switch in ("TinyMetric", "QUICKSTART", "FAST", "os.environ"):
            assert switch not in source


def run_code_cells(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Run the notebook's code cells as Jupyter would (from ``notebooks/``, plots to Agg) and
    return their namespace; the global RNG and ``sys.path`` are restored afterwards."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setattr(sys, "path", list(sys.path))  # the notebook prepends the repo root
    monkeypatch.setattr(plt, "show", lambda *args, **kwargs: None)
    monkeypatch.chdir(NOTEBOOK.parent)  # where Jupyter starts it
    namespace: dict = {"__name__": "__quickstart__"}
    source = compile("\n\n".join(code_cells(build_notebook())), "quickstart", "exec")
    with torch.random.fork_rng():
        try:
            exec(source, namespace)
        finally:
            plt.close("all")
    return namespace


@pytest.mark.parametrize("data", ["shared", "missing"])
def test_code_cells_run_with_tiny_models_patched_in(
    data: str, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(model, "MetricModel", TinyMetric)
    monkeypatch.setattr(defense, "WEIGHTS_DIR", tiny_weights.parent)
    monkeypatch.setattr(purifier.config, "DEFAULTS_FILE", tmp_path / "absent.json")
    if data == "missing":  # no data folder: samples/ if shipped, else a synthetic picture
        monkeypatch.setenv("PURIFY_DATA", str(tmp_path / "no-data"))
    namespace = run_code_cells(monkeypatch)
    assert isinstance(namespace["metric"], TinyMetric)
    clean, attacked, purified = (namespace[k] for k in ("clean", "attacked", "purified"))
    assert clean.shape == attacked.shape == purified.shape
    assert clean.shape[0] == 1 and clean.shape[1] == 3
    assert not torch.equal(attacked, clean) and not torch.equal(purified, attacked)
    assert all(math.isfinite(v) for v in namespace["scores"].values())
    assert namespace["gains"]["clean"] == 0.0 and namespace["qualities"]["clean"] == 1.0
    assert namespace["defense"].weights == tiny_weights


def test_code_cells_run_the_real_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The path a user runs: the shipped stand-in metric, a 192 px picture, the shipped
    denoiser and defaults. A few seconds on CPU."""
    namespace = run_code_cells(monkeypatch)
    assert namespace["clean"].shape[-2:] == (192, 192)
    gains, qualities = namespace["gains"], namespace["qualities"]
    # the attack works and the defense takes most of it back, keeping a usable picture
    assert gains["attacked"] > 20.0
    assert gains["purified"] < gains["attacked"] / 3
    assert qualities["purified"] > 0.5
