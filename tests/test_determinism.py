"""Determinism: a seed gives bit-identical results on CPU, another seed other noise, and no
library call reads or advances a global RNG (torch, numpy, Python's ``random``)."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from attacks import ATTACKS, make_attack
from attacks.dataset import make_dataset
from attacks.eot import GaussianNoise
from common.image_checks import check_images
from common.image_io import save_image
from common.seeds import name_seed
from defense import Defense
from purifier import PurifierConfig
from purifier.cli import main as purify_main

KNOBS = {"t_star": 20, "steps": 2}
CONFIGS = {
    "ddpm": PurifierConfig(**KNOBS),
    "ensemble+unsharp": PurifierConfig(ensemble=2, unsharp_amount=0.5, **KNOBS),
    "ddim": PurifierConfig(t_star=19, steps=2, sampler="ddim"),
}


pytestmark = pytest.mark.usefixtures("provisional_defaults")


@contextmanager
def global_rng_untouched() -> Iterator[None]:
    """Fail if the body changes torch's, numpy's or Python's global RNG state."""
    torch_state, torch_seed = torch.get_rng_state(), torch.random.initial_seed()
    numpy_state, python_state = np.random.get_state(), random.getstate()
    yield
    assert torch.equal(torch.get_rng_state(), torch_state), "torch's global RNG was used"
    assert torch.random.initial_seed() == torch_seed, "torch's global RNG was reseeded"
    after = np.random.get_state()
    assert np.array_equal(after[1], numpy_state[1]) and after[2] == numpy_state[2], "numpy's"
    assert random.getstate() == python_state, "Python's random module was used"


def images(batch: int = 2, height: int = 12, width: int = 10, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def test_the_guard_notices_global_rng_use() -> None:
    with pytest.raises(AssertionError, match="torch's global RNG was used"):  # noqa: SIM117
        with global_rng_untouched():
            torch.rand(1)
    with pytest.raises(AssertionError, match="numpy"), global_rng_untouched():
        np.random.rand()


# --- Defense ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_defense_same_seed_is_bit_identical_and_rng_is_untouched(
    tiny_weights: Path, name: str
) -> None:
    x = images()
    with global_rng_untouched(), torch.no_grad():
        first = Defense(weights=tiny_weights, seed=7, config=CONFIGS[name])
        second = Defense(weights=tiny_weights, seed=7, config=CONFIGS[name])
        runs_a = [first.apply_defense(x) for _ in range(2)]
        runs_b = [second.apply_defense(x) for _ in range(2)]
        unseeded = Defense(weights=tiny_weights, config=CONFIGS[name]).apply_defense(x)
    assert all(torch.equal(a, b) for a, b in zip(runs_a, runs_b, strict=True))
    assert unseeded.shape == x.shape
    assert not torch.equal(runs_a[0], runs_a[1])  # each call draws fresh noise (ddim: at t_star)


def test_ddim_depends_on_the_seed_through_the_start_noise(tiny_weights: Path) -> None:
    x = images()
    with torch.no_grad():
        a = Defense(weights=tiny_weights, seed=1, config=CONFIGS["ddim"]).apply_defense(x)
        b = Defense(weights=tiny_weights, seed=2, config=CONFIGS["ddim"]).apply_defense(x)
    assert not torch.equal(a, b)


def test_different_seeds_give_different_noise(tiny_weights: Path) -> None:
    x = images()
    with torch.no_grad():
        outs = [
            Defense(weights=tiny_weights, seed=s, config=CONFIGS["ddpm"]).apply_defense(x)
            for s in (0, 1, 2)
        ]
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[1], outs[2])


def test_a_call_with_its_own_generator_leaves_the_purifiers_sequence_alone(
    tiny_weights: Path,
) -> None:
    x = images()
    with torch.no_grad():
        interrupted = Defense(weights=tiny_weights, seed=3, config=CONFIGS["ddpm"]).purifier
        interrupted(x, torch.Generator().manual_seed(99))
        plain = Defense(weights=tiny_weights, seed=3, config=CONFIGS["ddpm"]).purifier
        assert torch.equal(interrupted(x), plain(x))


def test_gradients_through_the_defense_are_reproducible(tiny_weights: Path) -> None:
    grads = []
    for _ in range(2):
        x = images().requires_grad_()
        defense = Defense(weights=tiny_weights, seed=5, config=CONFIGS["ddpm"])
        with global_rng_untouched():
            defense.apply_defense(x).square().sum().backward()
        grads.append(x.grad)
    assert torch.equal(grads[0], grads[1])


# --- purify CLI ------------------------------------------------------------------------------


def _tree(root: Path) -> Path:
    for i, name in enumerate(["a.png", "b.png", "sub/c.png", "d.png"]):
        save_image(images(1, 12, 10 + 2 * (i % 2), seed=i)[0], root / name)
    return root


def _purify(source: Path, out: Path, weights: Path, *extra: str) -> dict[str, bytes]:
    argv = [str(source), str(out), "--weights", str(weights), "-q", "--t-star", "20"]
    assert purify_main([*argv, "--steps", "2", *extra]) == 0
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.png")}


def test_purify_cli_seed_is_per_image(tiny_weights: Path, tmp_path: Path) -> None:
    source = _tree(tmp_path / "in")
    with global_rng_untouched():
        one = _purify(source, tmp_path / "one", tiny_weights, "--seed", "4")
    batched = _purify(
        source, tmp_path / "batched", tiny_weights, "--seed", "4", "--batch-size", "3"
    )
    assert one == batched and len(one) == 4  # batching does not change any pixel
    (source / "a.png").unlink()  # a smaller input tree: the other images are unchanged
    partial = _purify(source, tmp_path / "partial", tiny_weights, "--seed", "4")
    assert partial == {k: v for k, v in one.items() if k != "a.png"}
    other = _purify(source, tmp_path / "other", tiny_weights, "--seed", "5")
    assert all(other[k] != partial[k] for k in partial)


def test_purify_cli_tiled_runs_are_reproducible(tiny_weights: Path, tmp_path: Path) -> None:
    save_image(images(1, 30, 26)[0], tmp_path / "in" / "big.png")
    tiles = ["--seed", "1", "--tile", "16", "--tile-overlap", "4"]
    first = _purify(tmp_path / "in", tmp_path / "one", tiny_weights, *tiles)
    assert first == _purify(tmp_path / "in", tmp_path / "two", tiny_weights, *tiles)


def test_purify_cli_without_seed_draws_fresh_noise(tiny_weights: Path, tmp_path: Path) -> None:
    save_image(images(1, 12, 12)[0], tmp_path / "in" / "x.png")
    with global_rng_untouched():
        first = _purify(tmp_path / "in", tmp_path / "one", tiny_weights)
    assert first != _purify(tmp_path / "in", tmp_path / "two", tiny_weights)


def test_name_seed_is_pinned() -> None:
    # sha256-based, so identical on every platform and Python version.
    assert name_seed(0, "a.png") == name_seed(0, "a.png") != name_seed(0, "b.png")
    assert name_seed(0, "a.png") != name_seed(1, "a.png")
    assert name_seed(0, "sub/c.png") == 7274948308881731101
    raw = b"sub/bad\xffname.png"  # not UTF-8: os.fsdecode gives a surrogate for the byte
    expected = int.from_bytes(hashlib.sha256(b"0/" + raw).digest()[:8], "little") & (2**63 - 1)
    assert name_seed(0, os.fsdecode(raw)) == expected
    assert 0 <= name_seed(2**40, "x" * 300) < 2**63


# --- attacks and make_dataset ----------------------------------------------------------------


class ToyMetric(nn.Module):
    """A tiny conv net: ``(B, 3, H, W)`` in [0, 1] -> ``(B, 1)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 1, 1)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        return 50 + 20 * self.head(torch.tanh(self.conv(x))).mean(dim=(2, 3))


def _attack_options(name: str) -> dict:
    if name == "uap":
        return {"perturbation": torch.full((3, 8, 8), 0.01)}
    return {"eot_transform": GaussianNoise(0.02), "eot_samples": 2}


def _noisy_defense(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return (x + 0.01 * torch.randn(x.shape, generator=generator)).clamp(0, 1)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attacks_use_only_their_generator(name: str) -> None:
    x, metric = images(2, 16, 16), ToyMetric().eval()
    attack = make_attack(name, metric, **_attack_options(name))
    with global_rng_untouched():
        first = attack(x, torch.Generator().manual_seed(3))
        second = attack(x, torch.Generator().manual_seed(3))
        attack(x)  # no generator: a fresh one from OS entropy, still not the global RNG
    assert torch.equal(first, second)


def test_stochastic_defense_in_the_loop_follows_the_attack_generator() -> None:
    x, metric = images(2, 16, 16), ToyMetric().eval()
    attack = make_attack("ifgsm", metric, defense=_noisy_defense, eot_samples=2)
    with global_rng_untouched():
        a = attack(x, torch.Generator().manual_seed(1))
        b = attack(x, torch.Generator().manual_seed(1))
        c = attack(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def _dataset(clean: Path, out: Path, metric: nn.Module, seed: int) -> dict[str, bytes]:
    noisy = {"eot_transform": GaussianNoise(0.05), "eot_samples": 2}
    make_dataset(
        clean,
        out,
        metric,
        attacks=["ifgsm"],
        seed=seed,
        overrides={"ifgsm": noisy},
        progress=False,
    )
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.png")}


def test_make_dataset_is_reproducible_and_seeded(tmp_path: Path) -> None:
    for i in range(2):
        save_image(images(1, 16, 16, seed=i)[0], tmp_path / "clean" / f"img{i}.png")
    metric = ToyMetric().eval()  # nn.Conv2d's initialisation uses the global RNG: build it first
    with global_rng_untouched():
        first = _dataset(tmp_path / "clean", tmp_path / "one", metric, seed=0)
        again = _dataset(tmp_path / "clean", tmp_path / "two", metric, seed=0)
        other = _dataset(tmp_path / "clean", tmp_path / "three", metric, seed=1)
    assert first == again and len(first) == 4
    for name in ("attacked/ifgsm/img0.png", "attacked/ifgsm/img1.png"):
        assert other[name] != first[name]
    assert other["reference/img0.png"] == first["reference/img0.png"]
