"""evaluation/srcc_cost.py: what costs SRCC, read off a benchmark.json (exact figures)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from evaluation.srcc_cost import main, markdown, srcc_cost_rows

SOURCE = {"a": 10.0, "b": 20.0, "c": 30.0, "d": 40.0}


def _entry(defended_clean: dict, attacked: dict, defended: dict) -> dict:
    records = [
        {
            "attack": attack,
            "name": name,
            "source_score": SOURCE[name],
            "attacked_score": attacked[attack][name],
            "defense_score": defended[attack][name],
        }
        for attack in sorted(attacked)
        for name in SOURCE
    ]
    clean = [
        {"attack": "clean", "name": n, "source_score": s, "defense_score": defended_clean[n]}
        for n, s in SOURCE.items()
    ]
    return {"records": records, "clean_records": clean}


# The defense halves every clean score (ranking kept). Attack "x" doubles each image and the
# defense leaves 10 % of its output on top of the clean output; attack "y" raises image "a"
# most and the defense lets 1.0x, 0.5x, ... of each image's uplift through.
DEFENDED_CLEAN = {n: s / 2 for n, s in SOURCE.items()}
ATTACKED = {
    "x": {n: 2 * s for n, s in SOURCE.items()},
    "y": {"a": 40.0, "b": 30.0, "c": 36.0, "d": 44.0},
}
DEFENDED = {
    "x": {n: 1.1 * s / 2 for n, s in SOURCE.items()},
    "y": {"a": 25.0, "b": 11.0, "c": 15.6, "d": 20.8},
}


def test_rows_pin_the_residual_and_the_rankings() -> None:
    rows = srcc_cost_rows(_entry(DEFENDED_CLEAN, ATTACKED, DEFENDED))
    x, y, total = rows
    assert (x["attack"], x["images"]) == ("x", 4)
    assert (total["attack"], total["images"]) == ("All Attacks", 8)
    assert x["srcc"] == pytest.approx(1.0) and x["clean srcc"] == pytest.approx(1.0)
    assert x["residual %"] == pytest.approx(10.0) and x["sd %"] == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(x["rho(uplift)"])  # a constant residual has no ranking
    # y: residuals 400 %, 10 %, 4 %, 4 % of the clean output; uplifts 3, 0.5, 0.2, 0.1
    assert y["residual %"] == pytest.approx((400 + 10 + 4 + 4) / 4)
    assert y["rho(uplift)"] == pytest.approx(spearman_of([400, 10, 4, 4], [3, 0.5, 0.2, 0.1]))
    assert y["srcc"] == pytest.approx(-0.2)  # defended 25, 11, 15.6, 20.8: ranks 4, 1, 2, 3
    assert total["srcc"] == pytest.approx((1.0 - 0.2) / 2)
    assert total["residual %"] == pytest.approx((4 * 10 + 418) / 8)


def spearman_of(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b)[0])


def test_bad_entries_are_named() -> None:
    entry = _entry(DEFENDED_CLEAN, ATTACKED, DEFENDED)
    with pytest.raises(ValueError, match="no clean_records"):
        srcc_cost_rows({**entry, "clean_records": []})
    with pytest.raises(ValueError, match="x/d has no clean record"):
        srcc_cost_rows({**entry, "clean_records": entry["clean_records"][:3]})
    with pytest.raises(ValueError, match="no defense 'nope'"):
        markdown({"defenses": {"ddpm": entry}}, ["nope"])


def test_cli_reads_every_judge(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    entry = _entry(DEFENDED_CLEAN, ATTACKED, DEFENDED)
    run = {"meta": {"metric": "m2"}, "defenses": {"ddpm": entry}, "judges": {"m1": {"ddpm": entry}}}
    path = tmp_path / "benchmark.json"
    path.write_text(json.dumps(run))
    assert main([str(path), "--output", str(tmp_path / "out" / "cost.md")]) == 0
    text = capsys.readouterr().out
    assert "## ddpm under m2" in text and "## ddpm under m1" in text
    assert "| x | 4 | 1.000 | 1.000 | +10.0 | 0.0 | +nan |" in text
    assert "| m1 | ddpm | 8 | 0.400 | 1.000 | +57." in text  # the summary row: 458 / 8 %
    assert (tmp_path / "out" / "cost.md").read_text() == text
    with pytest.raises(SystemExit, match="srcc_cost.py: error"):
        main([str(tmp_path / "missing.json")])
