"""scripts/fidelity_probe.py: the three fidelity corrections, their bad values, and one run on a
tiny dataset with the tiny denoiser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_bench import write_tiny_dataset

from evaluation.benchmarking import score_shift
from evaluation.fidelity_probe import (
    fixed_level_purifiers,
    lowpass,
    main,
    make_correction,
    parse_args,
    record,
    soft_threshold,
)


def test_blend_moves_the_output_toward_the_input() -> None:
    x, y = torch.ones(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    assert torch.equal(make_correction("blend:0.25")(x, y), torch.full((1, 3, 4, 4), 0.25))
    assert torch.equal(make_correction("blend:1")(x, y), x)
    assert torch.equal(make_correction("none")(x, y), y)


def test_lowpass_keeps_constants_and_removes_a_checkerboard() -> None:
    constant = torch.full((1, 3, 8, 8), 0.3)
    assert torch.allclose(lowpass(constant, 4), constant)
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 0.2 - 0.1
    checker = checker.expand(1, 3, 8, 8).float()
    assert torch.allclose(lowpass(checker, 2), torch.zeros(1, 3, 8, 8), atol=1e-7)
    y = torch.full((1, 3, 8, 8), 0.5)
    assert torch.allclose(make_correction("lowpass:2")(y + checker, y), y, atol=1e-7)


def test_deadzone_restores_only_what_exceeds_the_budget() -> None:
    residual = torch.tensor([-20.0, -5.0, 0.0, 5.0, 20.0]) / 255
    expected = torch.tensor([-10.0, 0.0, 0.0, 0.0, 10.0]) / 255
    assert torch.allclose(soft_threshold(residual, 10 / 255), expected)
    y = torch.full((1, 3, 2, 2), 0.5)
    x = y + torch.tensor([[20.0, 5.0], [-5.0, -20.0]]) / 255
    out = make_correction("deadzone:10")(x, y)
    assert torch.allclose(out[0, 0], 0.5 + torch.tensor([[10.0, 0.0], [0.0, -10.0]]) / 255)


@pytest.mark.parametrize(
    "spec",
    [
        "guided:1",
        "none:1",
        "blend",
        "blend:x",
        "blend:0",
        "blend:1.5",
        "lowpass:1",
        "lowpass:2.5",
        "deadzone:0",
        "deadzone:300",
    ],
)
def test_bad_corrections_raise(spec: str) -> None:
    with pytest.raises(ValueError):
        make_correction(spec)


def test_cli_rejects_bad_options() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--variants", "lowpass:1"])
    with pytest.raises(SystemExit):
        parse_args(["--limit", "0"])


def test_probe_run_writes_a_report(
    tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from common.paths import WEIGHTS_DIR
    from evaluation import harness
    from model import MetricModel

    # v1 scores the tiny dataset's flat noise images above 0 (v2, the default, below: the
    # Gain's signed denominator would flip the sign the assertions below rely on)
    v1 = WEIGHTS_DIR / "standin-metric-v1"
    monkeypatch.setattr(harness, "load_metric", lambda root, device: MetricModel(device, v1))
    data = write_tiny_dataset(tmp_path / "data")
    output = tmp_path / "probe.md"
    args = ["--data", str(data), "--weights", str(tiny_weights), "--t-stars", "20"]
    args += ["--variants", "none", "blend:1", "lowpass:4", "--output", str(output)]
    assert main(args) == 0
    results = json.loads(output.with_suffix(".json").read_text())
    assert list(results) == ["20"] and list(results["20"]) == ["none", "blend:1", "lowpass:4"]
    report = output.read_text()
    assert "| 20 | lowpass:4 |" in report
    # blend:1 returns the input itself: the references score 0 Gain, the attacked images their
    # undefended Gain (> 0: the tiny dataset's noise changes the stand-in's score).
    assert results["20"]["blend:1"]["clean_gain"] == 0.0
    assert results["20"]["blend:1"]["clean_quality"] > 0.99
    assert results["20"]["blend:1"]["gain"] > 0.0
    assert results["20"]["blend:1"]["clean_bias"] == 0.0
    assert set(results["20"]["none"]["bias_by_attack"]) == {"attack_a", "attack_b"}


def test_score_shift_keeps_the_sign_and_skips_nan() -> None:
    def rec(source: float, defended: float) -> object:
        return record("a", "x.png", source, defended, defended, (30.0, 0.9))

    assert score_shift([rec(10.0, 12.0), rec(10.0, 9.0)]) == pytest.approx(5.0)
    assert score_shift([rec(10.0, 9.0), rec(10.0, float("nan"))]) == pytest.approx(-10.0)


def test_fixed_level_purifiers_are_float32_without_ramp_or_gate(tiny_weights: Path) -> None:
    purifiers = fixed_level_purifiers(tiny_weights, "cpu", [20, 40])
    assert sorted(purifiers) == [20, 40]
    for t, purifier in purifiers.items():
        config = purifier.config
        assert (config.t_star, config.t_star_max, config.gate) == (t, 0, 0.0)
        assert config.precision == "float32" and purifier.autocast_dtype is None
