"""Bridge fine-tuning: the bridge target and loss, the score-consistency loss, random attack
draws, the pair pool, and ``scripts/finetune_bridge.py`` end to end on tiny data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attacks.registry import ATTACKS
from attacks.training_pairs import PairPool, RandomAttacks, batch_universal
from common import image_io
from common.image_io import load_image, save_image
from common.weights_manifest import verify_manifest
from diffusion import training_scheduler
from diffusion.bridge_loss import (
    bridge_epsilon_target,
    bridge_loss,
    highpass,
    min_snr_weights,
)
from metrics.iqa_losses import score_consistency_loss
from tests.conftest import write_tiny_release, write_tiny_standin
from training import bridge as finetune_bridge


def brightness(images: torch.Tensor) -> torch.Tensor:
    """A toy differentiable metric: 100 x mean brightness, ``(B, 1)``."""
    return images.mean(dim=(1, 2, 3)).unsqueeze(1) * 100


# ------------------------------------------------------------------ the bridge objective
def test_bridge_target_recovers_the_clean_image() -> None:
    gen = torch.Generator().manual_seed(0)
    clean = torch.rand(2, 3, 8, 8, generator=gen) * 2 - 1
    attacked = clean + 0.05 * torch.randn(2, 3, 8, 8, generator=gen)
    noise = torch.randn(2, 3, 8, 8, generator=gen)
    alpha_bar = torch.tensor([0.9, 0.5])
    root = alpha_bar.sqrt().view(-1, 1, 1, 1)
    noisy = root * attacked + (1 - alpha_bar).sqrt().view(-1, 1, 1, 1) * noise
    target = bridge_epsilon_target(noise, clean, attacked, alpha_bar)
    x0 = (noisy - (1 - alpha_bar).sqrt().view(-1, 1, 1, 1) * target) / root
    torch.testing.assert_close(x0, clean, atol=1e-6, rtol=0)
    torch.testing.assert_close(bridge_epsilon_target(noise, clean, clean, alpha_bar), noise)


def test_min_snr_weights_pinned() -> None:
    weights = min_snr_weights(torch.tensor([0.5, 0.9, 0.99]), gamma=5.0)
    torch.testing.assert_close(weights, torch.tensor([1.0, 5 / 9, 5 / 99]))
    with pytest.raises(ValueError, match="gamma"):
        min_snr_weights(torch.tensor([0.5]), gamma=0.0)


class Oracle(nn.Module):
    """Predicts exactly the bridge target for a known clean batch."""

    def __init__(self, clean: torch.Tensor, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.clean, self.alphas_cumprod = clean, alphas_cumprod
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        ab = self.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        return (noisy - ab.sqrt() * self.clean) / (1 - ab).sqrt() + 0 * self.anchor


def test_bridge_loss_is_zero_for_the_oracle_and_positive_otherwise() -> None:
    scheduler = training_scheduler()
    gen = torch.Generator().manual_seed(1)
    clean = torch.rand(3, 3, 8, 8, generator=gen) * 2 - 1
    attacked = (clean + 0.06 * torch.randn(3, 3, 8, 8, generator=gen)).clamp(-1, 1)
    timesteps = torch.tensor([5, 60, 150])
    oracle = Oracle(clean, scheduler.alphas_cumprod)
    out = bridge_loss(oracle, scheduler, clean, attacked, timesteps, torch.Generator())
    assert out.loss.item() < 1e-8
    torch.testing.assert_close(out.x0_hat, clean, atol=1e-4, rtol=0)
    zero = Oracle(torch.zeros_like(clean), scheduler.alphas_cumprod)
    assert bridge_loss(zero, scheduler, clean, attacked, timesteps, gen).loss.item() > 0.01


def test_bridge_loss_rejects_bad_shapes() -> None:
    scheduler = training_scheduler()
    model = Oracle(torch.zeros(2, 3, 8, 8), scheduler.alphas_cumprod)
    x = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match="one shape"):
        bridge_loss(model, scheduler, x, x[:1], torch.tensor([1, 2]), torch.Generator())
    with pytest.raises(ValueError, match="timesteps"):
        bridge_loss(model, scheduler, x, x, torch.tensor([1]), torch.Generator())


def test_highpass_removes_block_means_only() -> None:
    flat = torch.full((1, 3, 8, 8), 0.3)
    torch.testing.assert_close(highpass(flat, 4), torch.zeros_like(flat))
    checker = (torch.arange(8).view(1, 8) + torch.arange(8).view(8, 1)) % 2 * 2.0 - 1.0
    fine = checker.expand(1, 3, 8, 8)
    torch.testing.assert_close(highpass(fine + 0.5, 4), fine)
    ramp = torch.arange(10.0).view(1, 1, 10, 1).expand(1, 3, 10, 2)
    column = [-1.5, -0.5, 0.5, 1.5, -1.5, -0.5, 0.5, 1.5, -0.5, 0.5]  # last block: rows 8, 9
    assert highpass(ramp, 4)[0, 0, :, 0].tolist() == column
    odd = torch.rand(2, 3, 7, 5, generator=torch.Generator().manual_seed(0))
    detail = highpass(odd, 4)  # smaller blocks at the edges: each block's mean is removed
    assert detail.shape == odd.shape
    assert F.avg_pool2d(detail, 4, stride=4, ceil_mode=True).abs().max() < 1e-6
    with pytest.raises(ValueError, match="block"):
        highpass(flat, 1)


def test_detail_weight_adds_the_min_snr_weighted_fine_error() -> None:
    scheduler = training_scheduler()
    gen = torch.Generator().manual_seed(2)
    clean = torch.rand(2, 3, 8, 8, generator=gen) * 2 - 1
    attacked = (clean + 0.06 * torch.randn(2, 3, 8, 8, generator=gen)).clamp(-1, 1)
    timesteps = torch.tensor([10, 120])
    model = Oracle(torch.zeros_like(clean), scheduler.alphas_cumprod)

    def run(weight: float):
        return bridge_loss(
            model, scheduler, clean, attacked, timesteps, torch.Generator().manual_seed(3),
            5.0, weight, 4,
        )  # fmt: skip

    base, detailed = run(0.0), run(2.0)
    alpha_bar = scheduler.alphas_cumprod[timesteps]
    snr = (alpha_bar / (1 - alpha_bar)).clamp(max=5.0)
    fine = highpass(base.x0_hat - clean, 4).pow(2).mean(dim=(1, 2, 3))
    expected = base.loss + (2.0 * snr * fine).mean()
    torch.testing.assert_close(detailed.loss, expected, rtol=1e-5, atol=0)
    oracle = Oracle(clean, scheduler.alphas_cumprod)
    exact = bridge_loss(oracle, scheduler, clean, attacked, timesteps, gen, 5.0, 2.0, 4)
    assert exact.loss.item() < 1e-8
    with pytest.raises(ValueError, match="detail_weight"):
        bridge_loss(oracle, scheduler, clean, attacked, timesteps, gen, 5.0, -1.0, 4)


# ------------------------------------------------------------- metric-consistency term
def test_score_consistency_loss_pinned_and_one_sided_gradient() -> None:
    scores = torch.tensor([[110.0], [45.0]], requires_grad=True)
    reference = torch.tensor([[100.0], [50.0]], requires_grad=True)
    loss = score_consistency_loss(scores, reference)
    torch.testing.assert_close(loss, torch.tensor(0.1))
    loss.backward()
    torch.testing.assert_close(scores.grad, torch.tensor([[0.005], [-0.01]]))
    assert reference.grad is None
    near_zero = score_consistency_loss(torch.tensor([0.5]), torch.tensor([0.0]))
    torch.testing.assert_close(near_zero, torch.tensor(0.5))  # floor 1
    with pytest.raises(ValueError, match="entries"):
        score_consistency_loss(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="floor"):
        score_consistency_loss(torch.zeros(2), torch.zeros(2), floor=0.0)


# --------------------------------------------------------------------- random attacks
def test_random_attack_draws_are_seeded_and_within_ranges() -> None:
    sampler = RandomAttacks(brightness, eps_range=(2 / 255, 16 / 255), max_steps=6)
    draws = [sampler.draw(torch.Generator().manual_seed(s)) for s in range(300)]
    again = [sampler.draw(torch.Generator().manual_seed(s)) for s in range(5)]
    assert repr(draws[:5]) == repr(again)  # the EOT transform compares by repr
    assert {name for name, _ in draws} == set(ATTACKS)
    for name, options in draws:
        if ATTACKS[name].bound is None:
            assert "eps" not in options
        else:
            assert 2 / 255 <= options["eps"] <= 16 / 255
            assert options.get("alpha", 0) <= options["eps"]
        assert 1 <= options.get("steps", 1) <= 6
        assert options.get("eot_samples", 1) in (1, 2)
    assert any("eot_samples" in options for _, options in draws)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"names": ()}, "names"),
        ({"names": ("nope",)}, "names"),
        ({"eps_range": (0.0, 0.1)}, "eps_range"),
        ({"eps_range": (0.2, 0.1)}, "eps_range"),
        ({"max_steps": 0}, "max_steps"),
        ({"eot_prob": 1.5}, "eot_prob"),
    ],
)
def test_random_attacks_reject_bad_settings(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RandomAttacks(brightness, **kwargs)


def test_random_attack_raises_the_score_within_budget() -> None:
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.8
    sampler = RandomAttacks(brightness, names=("ifgsm",), eps_range=(4 / 255, 4 / 255))
    attacked, name = sampler.attack(images, torch.Generator().manual_seed(3))
    assert name == "ifgsm"
    assert (attacked - images).abs().max() <= 4 / 255 + 1e-6
    assert (brightness(attacked) > brightness(images)).all()


def test_batch_universal_shares_one_pattern() -> None:
    images = 0.25 + 0.5 * torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    attacked = batch_universal(brightness, images, 8 / 255, torch.Generator().manual_seed(1))
    delta = attacked - images
    torch.testing.assert_close(delta[0], delta[1])
    torch.testing.assert_close(delta[0], delta[2])
    assert delta.abs().max() <= 8 / 255 + 1e-6
    assert (brightness(attacked) > brightness(images)).all()
    with pytest.raises(ValueError, match="steps"):
        batch_universal(brightness, images, 8 / 255, torch.Generator(), steps=0)


# -------------------------------------------------------------------------- pair pool
def test_pair_pool_is_a_fifo_with_joint_augmentation() -> None:
    pool = PairPool(capacity=3)
    with pytest.raises(ValueError, match="empty"):
        pool.sample(1, torch.Generator())
    clean = torch.arange(4 * 3 * 4 * 4, dtype=torch.float32).view(4, 3, 4, 4) / 200
    pool.add(clean[:2], clean[:2] + 0.01, "a")
    pool.add(clean[2:], clean[2:] + 0.02, "b")
    assert len(pool) == 3 and pool.names == ["a", "b", "b"]
    torch.testing.assert_close(pool.clean[0], clean[1])
    assert pool.mean_linf() == pytest.approx((0.01 + 0.02 + 0.02) / 3, abs=1e-6)
    got_clean, got_attacked = pool.sample(20, torch.Generator().manual_seed(0))
    assert got_clean.shape == (20, 3, 4, 4)
    stored = {round(float(x.sum()), 3) for x in pool.clean}
    assert {round(float(x.sum()), 3) for x in got_clean} <= stored  # augmented stored crops
    offsets = (got_attacked - got_clean).flatten(1)
    assert torch.allclose(offsets, offsets[:, :1].expand_as(offsets), atol=1e-6)
    with pytest.raises(ValueError, match="shapes"):
        pool.add(clean[:1], clean[:2], "c")
    with pytest.raises(ValueError, match="capacity"):
        PairPool(0)


# ------------------------------------------------------------------------ the script
def _folder_of_images(folder: Path, count: int, size: tuple[int, int], seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        save_image(torch.rand(3, *size, generator=gen), folder / f"img{i:02d}.png")


def _tiny_args(tmp_path: Path, output: Path) -> list[str]:
    return [
        "--output", str(output), "--init", str(write_tiny_release(tmp_path / "init")),
        "--run-dir", str(tmp_path / "run" / output.name), "--max-steps", "2",
        "--threads", "1", "--crop", "32", "--prior-crop", "32", "--val-crop", "32",
        "--holdout", "2", "--batch-size", "2", "--prior-batch", "2", "--chain-batch", "1",
        "--chain-t-star", "5", "8", "--pool-size", "4", "--refresh", "2",
        "--mixed-precision", "no", "--attacks", "ifgsm,uap", "--max-attack-steps", "2",
        "--val-every", "1", "--checkpoint-every", "1",
    ]  # fmt: skip


def _tiny_pairs_args(tmp_path: Path, output: Path, data: Path) -> list[str]:
    """``_tiny_args`` for ``--pairs data`` (which holds out its own images: no --holdout)."""
    args = _tiny_args(tmp_path, output)
    at = args.index("--holdout")
    return [*args[:at], *args[at + 2 :], "--pairs", str(data)]


def test_finetune_bridge_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _folder_of_images(tmp_path / "clean", 6, (40, 36), seed=0)
    output = tmp_path / "weights" / "ddpm-v9"
    args = _tiny_args(tmp_path, output) + ["--train-dir", str(tmp_path / "clean")]
    args += ["--val-attacks", "ifgsm,fgsm"]
    assert finetune_bridge.main(args) == 0
    verify_manifest(output)
    manifest = json.loads((output / "manifest.json").read_text())
    training = manifest["training"]
    assert training["steps"] == 2 and training["attacks"] == ["ifgsm", "uap"]
    validation = training["validation"]
    expected = {"undefended_gain", "gain", "clean_gain", "psnr", "gain/ifgsm", "gain/fgsm"}
    expected |= {"leak", "leak/ifgsm", "leak/fgsm"}
    assert set(validation) == expected
    # equal-sized groups: the overall Gain is the mean of the per-attack Gains (3 decimals)
    per_attack = (validation["gain/ifgsm"] + validation["gain/fgsm"]) / 2
    assert validation["gain"] == pytest.approx(per_attack, abs=2e-3)
    leak_per_attack = (validation["leak/ifgsm"] + validation["leak/fgsm"]) / 2
    assert validation["leak"] == pytest.approx(leak_per_attack, abs=2e-4)
    # the starting weights were scored on the same crops before training
    assert set(training["init_validation"]) == expected
    assert training["init_validation"]["undefended_gain"] == validation["undefended_gain"]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 2
    with pytest.raises(SystemExit, match="released"):
        finetune_bridge.main(args)  # never overwrites a released folder


def test_finetune_bridge_with_two_metrics(tmp_path: Path) -> None:
    _folder_of_images(tmp_path / "clean", 6, (40, 36), seed=0)
    metrics = [write_tiny_standin(tmp_path / name, bias) for name, bias in (("a", 30), ("b", 60))]
    output = tmp_path / "ddpm-two"
    args = _tiny_args(tmp_path, output) + ["--train-dir", str(tmp_path / "clean")]
    args += ["--metric-checkpoint", *map(str, metrics), "--metric-weight", "1"]
    assert finetune_bridge.main(args) == 0
    training = json.loads((output / "manifest.json").read_text())["training"]
    assert training["metric"] == [str(m) for m in metrics]
    # validation is made and scored with the first metric alone
    assert (
        training["validation"]["undefended_gain"] == training["init_validation"]["undefended_gain"]
    )


def test_pick_draws_only_when_there_is_a_choice() -> None:
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    assert finetune_bridge.pick(["only"], generator) == "only"
    assert torch.equal(generator.get_state(), state)  # a one-metric run keeps its stream
    picks = [finetune_bridge.pick("abc", torch.Generator().manual_seed(s)) for s in range(12)]
    assert set(picks) == {"a", "b", "c"}
    again = [finetune_bridge.pick("abc", torch.Generator().manual_seed(s)) for s in range(12)]
    assert picks == again


def test_consistency_loss_averages_the_metrics() -> None:
    clean = torch.full((2, 3, 4, 4), 0.5)
    purified = torch.full((2, 3, 4, 4), 0.6, requires_grad=True)
    # scores 100 x brightness and 200 x brightness: both change by 20 %
    metrics = [brightness, lambda x: 2 * brightness(x)]
    loss = finetune_bridge.consistency_loss(metrics, purified, clean)
    assert loss.item() == pytest.approx(0.2)
    loss.backward()
    # d/dx of mean_i |100 m(x) - 50| / 50 with m the image mean, averaged over 2 metrics
    assert purified.grad.abs().sum().item() == pytest.approx(2.0)
    one = finetune_bridge.consistency_loss(metrics[:1], purified.detach(), clean)
    assert one.item() == pytest.approx(0.2)


def _pairs_dataset(root: Path) -> Path:
    _folder_of_images(root / "reference", 4, (36, 40), seed=1)
    for attack, seed in (("fgsm", 2), ("ifgsm", 3)):
        _folder_of_images(root / "attacked" / attack, 4, (36, 40), seed=seed)
    return root


def test_finetune_bridge_on_fixed_pairs(tmp_path: Path) -> None:
    data = _pairs_dataset(tmp_path / "pairs")
    _folder_of_images(tmp_path / "clean", 6, (40, 36), seed=0)
    output = tmp_path / "ddpm-mine"
    args = _tiny_pairs_args(tmp_path, output, data)
    args += ["--train-dir", str(tmp_path / "clean"), "--metric-weight", "0"]
    assert finetune_bridge.main(args) == 0
    training = json.loads((output / "manifest.json").read_text())["training"]
    assert training["attacks"] == "fixed pairs" and training["held_out"] == ["img00.png"]
    # held-out pairs are labelled by their attack folder
    assert {k for k in training["validation"] if k.startswith("gain/")} == {
        "gain/fgsm",
        "gain/ifgsm",
    }
    report = (tmp_path / "run" / "ddpm-mine" / "report.md").read_text()
    assert "Held out (1): img00.png" in report
    before, after = training["init_validation"]["gain"], training["validation"]["gain"]
    gain_row = f"| gain | {before} | {after} |"
    assert gain_row in report and "| gain/fgsm |" in report


def test_fixed_pairs_need_no_project_data_and_decode_each_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _pairs_dataset(tmp_path / "pairs")
    output = tmp_path / "ddpm-mine"
    args = _tiny_pairs_args(tmp_path, output, data) + ["--metric-weight", "0"]
    args += ["--data", str(tmp_path / "no-such-data")]
    decoded: list[str] = []

    def counting_load(path: Path) -> torch.Tensor:
        decoded.append(Path(path).relative_to(data).as_posix())
        return load_image(path)

    monkeypatch.setattr(image_io, "load_image", counting_load)
    monkeypatch.setattr(finetune_bridge, "load_image", counting_load)
    assert finetune_bridge.main(args) == 0
    assert (output / "manifest.json").is_file()
    # the prior reuses the pairs' references: 4 references + 8 attacked, each read once
    assert len(decoded) == len(set(decoded)) == 12


def test_fixed_pairs_keep_8_bit_pixels_and_share_references(tmp_path: Path) -> None:
    data = _pairs_dataset(tmp_path / "pairs")
    pairs = finetune_bridge.FixedPairs(data, ["img01.png", "img02.png"])
    assert len(pairs.pairs) == 4 and all(p[0].dtype == torch.uint8 for p in pairs.pairs)
    by_name = [p for p in pairs.pairs if p[0] is pairs.pairs[0][0]]
    assert [p[2] for p in by_name] == ["fgsm", "ifgsm"]  # one decoded reference, two attacks
    clean, attacked, _ = pairs.crops(3, 16, torch.Generator().manual_seed(0))
    assert clean.shape == attacked.shape == (3, 3, 16, 16) and clean.dtype == torch.float32
    assert float(clean.min()) >= 0.0 and float(clean.max()) <= 1.0
    assert torch.equal((clean * 255).round() / 255, clean)
    with pytest.raises(SystemExit, match="lower --val-crop"):
        pairs.crops(1, 64, torch.Generator(), flag="--val-crop")


def test_validation_needs_one_label_per_crop() -> None:
    images = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="1 labels for 2 attacked crops"):
        finetune_bridge.Validation(lambda x: x.mean((1, 2, 3))[:, None], images, images, ["a"], 0)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--pairs", "/no/such"], "--pairs /no/such: no reference/ folder"),
        (["--train-dir", "/no/such"], "--train-dir /no/such is not a folder"),
        (["--metric-checkpoint", "/no/p1q2.pth"], "--metric-checkpoint /no/p1q2.pth does not"),
        (["--init", "/no/such"], "--init /no/such: no manifest.json"),
        (["--resume", "/no/such"], "--resume /no/such: no such checkpoint folder"),
    ],
)
def test_missing_input_paths_stop_before_any_work(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    run_dir = tmp_path / "run"
    argv = ["--output", str(tmp_path / "out"), "--run-dir", str(run_dir), "--max-steps", "1"]
    with pytest.raises(SystemExit, match=f"^finetune_bridge.py: error: {re.escape(message)}"):
        finetune_bridge.main([*argv, *extra])
    assert not run_dir.exists()


def test_a_crop_larger_than_the_images_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    _folder_of_images(tmp_path / "clean", 3, (40, 36), seed=0)
    args = _tiny_args(tmp_path, tmp_path / "ddpm-mine") + ["--train-dir", str(tmp_path / "clean")]
    args[args.index("--crop") + 1] = "64"
    with pytest.raises(SystemExit, match=r"^finetune_bridge\.py: error: .*at least 64x64"):
        finetune_bridge.main(args)


def test_split_pairs_dataset_holds_out_every_tenth(tmp_path: Path) -> None:
    _folder_of_images(tmp_path / "reference", 12, (8, 8), seed=0)
    train, held = finetune_bridge.split_pairs_dataset(tmp_path, every=10)
    assert held == ["img05.png"] and len(train) == 11


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "--max-steps"),
        (["--max-steps", "1", "--attacks", "nope"], "unknown attacks"),
        (["--max-steps", "1", "--val-attacks", "fgsm,nope"], "--val-attacks: unknown attacks"),
        (["--max-steps", "1", "--clean-fraction", "2"], "clean-fraction"),
        (["--max-steps", "1", "--chain-t-star", "50", "10"], "chain-t-star"),
        (["--max-steps", "1", "--batch-size", "0"], "batch-size"),
        (["--max-steps", "1", "--metric-weight", "-1"], "weights"),
        (["--max-steps", "1", "--detail-weight", "-1"], "weights"),
        (["--max-steps", "1", "--detail-block", "1"], "detail-block"),
        (["--max-steps", "0"], "argument --max-steps: must be an integer >= 1"),
        (["--max-minutes", "0"], "argument --max-minutes: must be a finite number > 0"),
        (["--max-steps", "1", "--eps-range", "16", "2"], "--eps-range needs 0 < low <= high"),
        (["--max-steps", "1", "--holdout", "-1"], "--holdout must be >= 0"),
        (["--max-steps", "1", "--pairs", "p", "--holdout", "2"], "--holdout: not with --pairs"),
        (["--max-steps", "1", "--pairs", "p", "--val-attacks", "fgsm"], "--val-attacks: not"),
    ],
)
def test_finetune_bridge_rejects_bad_options(
    extra: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit):
        finetune_bridge.parse_args(["--output", "x", *extra])
    assert message in capsys.readouterr().err
