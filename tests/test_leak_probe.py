"""scripts/leak_probe.py: the leak figures on known residues, their bad inputs, the per-attack
summary, and one run on a tiny dataset with the tiny denoiser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_bench import write_tiny_dataset

from evaluation.leak_probe import ALL, leak_figures, leaks, main, parse_args, summarise


def pair(seed: int = 0, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """``(reference, attacked)``: a random image and a +-4/255 sign perturbation of it."""
    gen = torch.Generator().manual_seed(seed)
    reference = torch.rand(1, 3, size, size, generator=gen) * 0.5 + 0.25
    sign = torch.randint(0, 2, (1, 3, size, size), generator=gen).float() * 2 - 1
    return reference, reference + sign * 4 / 255


def test_an_identity_purifier_leaks_everything_and_a_constant_one_nothing() -> None:
    reference, attacked = pair()
    passed = leak_figures(attacked, reference, attacked, reference)
    assert passed["leak"] == pytest.approx(1.0) and passed["residue"] == pytest.approx(1.0)
    smooth = torch.full_like(reference, 0.5)
    removed = leak_figures(smooth, smooth, attacked, reference)
    assert removed == {"leak": 0.0, "residue": 0.0, "hf_share": 0.0}


def test_a_purifier_that_halves_the_perturbation_leaks_half() -> None:
    reference, attacked = pair(1)
    out_r = reference * 0.9  # the purifier's own change of r cancels in the residue
    out_a = out_r + 0.5 * (attacked - reference)
    figures = leak_figures(out_a, out_r, attacked, reference)
    assert figures["leak"] == pytest.approx(0.5) and figures["residue"] == pytest.approx(0.5)


def test_an_orthogonal_residue_is_no_leak_but_a_residue() -> None:
    reference = torch.full((1, 3, 8, 8), 0.5)
    attacked = reference.clone()
    attacked[0, 0] += 0.02  # the perturbation lives in the red channel
    residue = torch.zeros_like(reference)
    residue[0, 1] = 0.01  # the residue in the green one
    figures = leak_figures(reference + residue, reference, attacked, reference)
    assert figures["leak"] == 0.0 and figures["residue"] == pytest.approx(0.5)
    assert figures["hf_share"] == pytest.approx(0.0, abs=1e-12)  # a constant: no fine detail


def test_a_checkerboard_residue_is_all_fine_detail() -> None:
    reference, attacked = pair(2)
    checker = ((torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2 - 1).float()
    out_r = torch.full_like(reference, 0.5)
    figures = leak_figures(out_r + 0.01 * checker, out_r, attacked, reference)
    assert figures["hf_share"] == pytest.approx(1.0)


def test_batched_leaks_match_one_image_at_a_time() -> None:
    (r0, a0), (r1, a1) = pair(3), pair(4)
    reference, attacked = torch.cat([r0, r1, r1]), torch.cat([a0, a1, r1])  # row 2: no attack
    out_r = reference * 0.8
    out_a = out_r + torch.tensor([0.25, 0.75, 0.5]).view(3, 1, 1, 1) * (attacked - reference)
    batch = leaks(out_a, out_r, attacked, reference)
    assert batch[:2].tolist() == pytest.approx([0.25, 0.75]) and bool(batch[2].isnan())
    single = leak_figures(out_a[1:2], out_r[1:2], attacked[1:2], reference[1:2])
    assert single["leak"] == pytest.approx(float(batch[1]))


def test_bad_inputs_raise() -> None:
    reference, attacked = pair()
    with pytest.raises(ValueError, match="one shape"):
        leak_figures(attacked[..., :4], reference, attacked, reference)
    with pytest.raises(ValueError, match="no perturbation"):
        leak_figures(reference, reference, reference, reference)
    with pytest.raises(ValueError, match="no images"):
        summarise([])
    with pytest.raises(SystemExit):
        parse_args(["--limit", "0"])
    with pytest.raises(SystemExit):
        parse_args(["--t-stars", "0"])


def test_summary_weighs_every_attack_the_same() -> None:
    rows = [
        ("a", {"leak": 0.2, "residue": 0.4, "hf_share": 0.5}),
        ("a", {"leak": 0.4, "residue": 0.6, "hf_share": 0.7}),
        ("b", {"leak": 0.9, "residue": 1.0, "hf_share": 0.1}),
    ]
    summary = summarise(rows)
    assert list(summary) == ["a", "b", ALL]
    assert summary["a"]["leak"] == pytest.approx(0.3)
    assert summary[ALL]["leak"] == pytest.approx(0.6)  # (0.3 + 0.9) / 2, not 1.5 / 3
    assert summary[ALL]["hf_share"] == pytest.approx(0.35)


def test_probe_run_is_reproducible_and_writes_a_report(tmp_path: Path, tiny_weights: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data")
    args = ["--data", str(data), "--weights", str(tiny_weights), "--t-stars", "10", "20"]
    args += ["--no-progress", "--output"]
    assert main([*args, str(tmp_path / "one.md")]) == 0
    assert main([*args, str(tmp_path / "two.md")]) == 0
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert one["results"] == two["results"]  # seeded: the same noise for every run
    by_t = one["results"][str(tiny_weights)]
    assert list(by_t) == ["10", "20"]
    assert set(by_t["20"]) == {"attack_a", "attack_b", ALL}
    assert all(v["residue"] >= 0 and 0 <= v["hf_share"] <= 1 for v in by_t["20"].values())
    report = (tmp_path / "one.md").read_text()
    assert f"| {tiny_weights} | 20 |" in report and "## Leak per attack" in report
