"""Adaptive attacks (issue 6, part 5): BPDA is the defense forward and the identity backward;
full gradients really go through the purifier's reverse steps; scripts/adaptive_eval.py end to
end on tiny images with a tiny denoiser and a tiny stand-in metric; bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_bench import ToyMetric

import purifier.config
from attacks.adaptive import BPDA, adaptive_attack, call_defense, defense_in_loop
from common.image_io import centre_crop, save_image
from defense import Defense
from evaluation import adaptive_eval, harness
from tests.conftest import write_tiny_standin

KNOBS = {"t_star": 20, "steps": 2}


pytestmark = pytest.mark.usefixtures("provisional_defaults")


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- BPDA ----------------------------------------------------------------------------------


def test_bpda_forward_is_the_defense_and_backward_the_identity(tiny_defense: Defense) -> None:
    x = rand(2, 3, 12, 10).requires_grad_()
    weights = rand(2, 3, 12, 10, seed=1) - 0.5
    out = BPDA(tiny_defense.purifier)(x, generator=gen(4))
    with torch.no_grad():
        expected = tiny_defense.purifier(x, generator=gen(4))
    assert torch.equal(out, expected)
    (out * weights).sum().backward()
    assert torch.equal(x.grad, weights)


def test_bpda_ignores_the_defense_derivative_and_works_without_a_generator() -> None:
    x = torch.tensor([0.25, 0.5, 1.0]).reshape(1, 3, 1, 1).requires_grad_()
    out = BPDA(lambda images: images.square())(x, generator=gen(0))
    assert torch.equal(out.detach().flatten(), torch.tensor([0.0625, 0.25, 1.0]))
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # d(x^2)/dx would be [0.5, 1, 2]


def test_full_gradient_flows_through_the_reverse_steps(tiny_defense: Defense) -> None:
    x = rand(1, 3, 16, 16, seed=2)
    metric = ToyMetric().eval()
    grads = {}
    for mode in ("full", "bpda"):
        xr = x.clone().requires_grad_()
        metric(defense_in_loop(tiny_defense, mode)(xr, generator=gen(7))).sum().backward()
        grads[mode] = xr.grad
    # BPDA's gradient is the metric's gradient at the purified image, passed straight through.
    with torch.no_grad():
        purified = tiny_defense.purifier(x, generator=gen(7)).requires_grad_()
    metric(purified).sum().backward()
    assert torch.equal(grads["bpda"], purified.grad)
    assert grads["full"].abs().sum() > 0 and torch.isfinite(grads["full"]).all()
    assert not torch.allclose(grads["full"], grads["bpda"], rtol=0.1, atol=0)


def test_full_gradient_is_the_true_derivative_of_a_fixed_noise_purification(
    tiny_defense: Defense,
) -> None:
    """Central differences along a random direction agree with the autograd gradient."""
    x, direction = rand(1, 3, 8, 8, seed=3) * 0.6 + 0.2, rand(1, 3, 8, 8, seed=4) - 0.5
    metric = ToyMetric().eval().double()

    def f(images: torch.Tensor) -> torch.Tensor:
        return metric(tiny_defense.purifier(images.double(), generator=gen(9)).double()).sum()

    xr = x.double().requires_grad_()
    f(xr).backward()
    h = 1e-3
    with torch.no_grad():
        numeric = (f(x.double() + h * direction) - f(x.double() - h * direction)) / (2 * h)
    analytic = (xr.grad * direction).sum()
    assert float(numeric) == pytest.approx(float(analytic), rel=0.05)


def test_both_adaptive_attacks_raise_the_defended_score(tiny_defense: Defense) -> None:
    """Through the tiny purifier, both adaptive attacks raise f(defense(x)) under a held-out
    noise draw (with a random tiny denoiser they do about equally well)."""
    x, metric = rand(2, 3, 16, 16, seed=5), ToyMetric().eval()
    options = {"eps": 8 / 255, "steps": 5, "alpha": 2 / 255, "eot_samples": 2}

    def defended_score(images: torch.Tensor) -> float:
        with torch.no_grad():
            return float(metric(tiny_defense.purifier(images, generator=gen(99))).mean())

    clean = defended_score(x)
    for mode in ("full", "bpda"):
        adv = adaptive_attack(metric, tiny_defense, mode, **options)(x, gen(1))
        assert defended_score(adv) > clean + 0.1, mode


def test_full_gradients_beat_bpda_when_the_defense_is_far_from_the_identity() -> None:
    """A noisy colour inversion: BPDA's identity backward climbs the wrong way, the exact
    gradient does not."""

    def inverting(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(images.shape, generator=generator)
        return (1 - images + 0.01 * noise).clamp(0, 1)

    x, metric = rand(2, 3, 16, 16, seed=6) * 0.8 + 0.1, ToyMetric().eval()
    options = {"eps": 8 / 255, "steps": 4, "alpha": 2 / 255, "eot_samples": 2}

    def defended_score(images: torch.Tensor) -> float:
        with torch.no_grad():
            return float(metric(inverting(images, gen(99))).mean())

    clean = defended_score(x)
    full = defended_score(adaptive_attack(metric, inverting, "full", **options)(x, gen(1)))
    bpda = defended_score(adaptive_attack(metric, inverting, "bpda", **options)(x, gen(1)))
    assert full > clean > bpda


def test_adaptive_attack_puts_the_defense_in_the_loop(tiny_defense: Defense) -> None:
    metric = ToyMetric().eval()
    full = adaptive_attack(metric, tiny_defense, "full", eot_samples=3, eps=4 / 255)
    assert full.defense is tiny_defense.purifier and full.eot_samples == 3 and full.eps == 4 / 255
    bpda = adaptive_attack(metric, tiny_defense.purifier, "bpda")
    assert isinstance(bpda.defense, BPDA) and bpda.defense.defense is tiny_defense.purifier
    bare = adaptive_attack(metric, None, eot_samples=5)
    assert bare.defense is None and bare.eot_samples == 1
    assert repr(full).startswith("IFGSM(eps=0.01569, steps=10")


def test_call_defense_passes_the_generator_only_when_taken() -> None:
    seen = []

    def takes(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        seen.append(generator)
        return images

    g = gen(0)
    call_defense(takes, torch.zeros(1, 3, 1, 1), g)
    call_defense(lambda images: images, torch.zeros(1, 3, 1, 1), g)
    assert seen == [g]


def test_adaptive_helpers_refuse_bad_input(tiny_defense: Defense) -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        defense_in_loop(tiny_defense, "identity")
    with pytest.raises(ValueError, match="must be callable"):
        defense_in_loop(42)
    with pytest.raises(ValueError, match="must be callable"):
        BPDA("not a defense")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape-preserving"):
        BPDA(lambda images: images[..., :1])(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="unknown attack"):
        adaptive_attack(ToyMetric(), tiny_defense, attack="nope")


# --- the evaluation pieces ----------------------------------------------------------------------


def test_centre_crop_and_eps_parsing_are_pinned() -> None:
    x = torch.arange(35.0).reshape(1, 1, 5, 7)
    assert centre_crop(x, 3).flatten().tolist() == [9, 10, 11, 16, 17, 18, 23, 24, 25]
    assert centre_crop(x, 6).shape == (1, 1, 5, 6)
    assert centre_crop(x, 0) is x
    assert adaptive_eval.parse_eps("4, 10") == [4 / 255, 10 / 255]
    for bad in ("", "0", "-4", "abc", "300"):
        with pytest.raises(ValueError, match="--eps takes"):
            adaptive_eval.parse_eps(bad)
    with pytest.raises(ValueError, match="crop size must be >= 0"):
        centre_crop(x, -1)


def test_evaluation_refuses_bad_input(tiny_defense: Defense, tmp_path: Path) -> None:
    images = [("a.png", rand(1, 3, 8, 8))]
    metric, purifier_fn = ToyMetric().eval(), tiny_defense.purifier
    with pytest.raises(ValueError, match="no images"):
        adaptive_eval.run_evaluation([], metric, purifier_fn, [4 / 255])
    for eps in ([], [0.0], [1.5]):
        with pytest.raises(ValueError, match="eps values must lie in"):
            adaptive_eval.run_evaluation(images, metric, purifier_fn, eps)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="no readable images"):
        adaptive_eval.load_clean_images(tmp_path / "empty", None, 0)
    with pytest.raises(ValueError, match="not a folder"):
        adaptive_eval.load_clean_images(tmp_path / "missing", None, 0)
    with pytest.raises(ValueError, match="limit must be >= 1"):
        adaptive_eval.load_clean_images(tmp_path / "empty", 0, 0)


def test_a_gated_defense_gets_the_evasion_attack_which_lowers_the_estimate(
    tiny_weights: Path,
) -> None:
    from purifier import DiffusionPurifier, PerturbationDetector, PurifierConfig

    torch.manual_seed(0)
    detector = PerturbationDetector((4, 4, 4, 4)).eval()
    for parameter in detector.parameters():
        parameter.requires_grad_(False)
    base = DiffusionPurifier.from_pretrained(tiny_weights, "cpu", PurifierConfig(**KNOBS))
    image = rand(1, 3, 16, 16, seed=5)
    gate = 0.5 * float(detector(image)[0])  # the clean image is over it: the attack must evade
    config = PurifierConfig(**KNOBS, gate=gate)
    gated = DiffusionPurifier(base.model, dict(base.scheduler.config), config, 0, detector)
    records = adaptive_eval.evaluate_image(
        "a.png", image, ToyMetric().eval(), gated, 10 / 255, iterations=3, alpha=2 / 255, eot=1,
        seed=0, evade_weight=1e4,
    )  # fmt: skip
    settings = [r.setting for r in records]
    assert settings == [*adaptive_eval.SETTINGS, adaptive_eval.EVADE]
    only = adaptive_eval.evaluate_image(
        "a.png", image, ToyMetric().eval(), gated, 10 / 255, iterations=1, alpha=2 / 255, eot=1,
        seed=0, adaptive=(adaptive_eval.EVADE,),
    )  # fmt: skip
    assert [r.setting for r in only] == ["undefended", "non-adaptive", "adaptive (evade gate)"]
    assert records[-1].linf <= 10 / 255 + 1e-6
    bare = adaptive_attack(ToyMetric().eval(), None, eps=10 / 255, steps=3, alpha=2 / 255)
    plain = bare(image, gen(0))
    metric = ToyMetric().eval()  # rebuild the evasion image to read its estimate

    def evading(x: torch.Tensor) -> torch.Tensor:
        return metric(x) - ((detector(x) - gate / 2).clamp_min(0) * 1e4)[:, None]

    evade = adaptive_attack(evading, None, eps=10 / 255, steps=3, alpha=2 / 255)(image, gen(0))
    assert float(detector(evade)[0]) < float(detector(plain)[0])


# --- the command line, end to end ---------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_standin_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # bias 50 keeps scores away from 0, which the relative Gain divides by
    return write_tiny_standin(tmp_path_factory.mktemp("metric") / "standin-tiny", bias=50.0)


@pytest.fixture(scope="module")
def report(
    tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path, toy_standin_folder: Path
) -> dict:
    root = tmp_path_factory.mktemp("adaptive")
    for i in range(2):
        save_image(rand(3, 20, 24 + i, seed=10 + i), root / "images" / f"img{i}.png")
    (root / "images" / "notes.txt").write_text("not an image")
    argv = [
        "--images", str(root / "images"),
        "--limit", "5",
        "--crop", "16",
        "--eps", "4,10",
        "--iterations", "2",
        "--eot", "2",
        "--weights", str(tiny_weights),
        "--t-star", "20",
        "--steps", "2",
        "--metric", str(toy_standin_folder),
        "--output", str(root / "out" / "adaptive.md"),
        "--no-progress",
    ]  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(purifier.config, "DEFAULTS_FILE", root / "absent.json")
        assert adaptive_eval.main(argv) == 0
    return {
        "markdown": (root / "out" / "adaptive.md").read_text(),
        "json": json.loads((root / "out" / "adaptive.json").read_text()),
    }


def test_cli_writes_every_row_and_record(report: dict) -> None:
    rows, records = report["json"]["rows"], report["json"]["records"]
    settings = ["undefended", "non-adaptive", "adaptive (full)", "adaptive (BPDA)"]
    assert [(r["eps_255"], r["setting"]) for r in rows] == [(0.0, "clean")] + [
        (eps, s) for eps in (4.0, 10.0) for s in settings
    ]
    assert len(records) == 2 + 2 * 2 * 4
    assert {r["image"] for r in records} == {"img0.png", "img1.png"}
    meta = report["json"]["meta"]
    assert meta["images"] == 2 and meta["crop"] == 16 and meta["eot"] == 2
    assert meta["defense_config"]["t_star"] == 20 and meta["defense_config"]["steps"] == 2
    assert meta["command"].startswith("python scripts/adaptive_eval.py --images ")
    assert meta["metric"] == "standin-tiny"


def test_cli_gains_are_the_harness_gains_averaged(report: dict) -> None:
    rows, records = report["json"]["rows"], report["json"]["records"]
    for record in records:
        want = harness.gain_score(record["reference_score"], record["output_score"])
        assert record["gain"] == pytest.approx(want, rel=1e-12)
        assert record["linf"] <= record["eps"] + 1e-6
    for row in rows:
        chosen = [r for r in records if (r["eps"], r["setting"]) == (row["eps"], row["setting"])]
        assert row["images"] == 2
        assert row["gain"] == pytest.approx(sum(r["gain"] for r in chosen) / 2, rel=1e-12)
        if row["setting"].startswith("adaptive"):
            non_adaptive = next(
                r for r in rows if r["eps"] == row["eps"] and r["setting"] == "non-adaptive"
            )
            assert row["x_non_adaptive"] == pytest.approx(row["gain"] / non_adaptive["gain"])
            assert row["within_3x_non_adaptive"] == (row["gain"] <= 3 * non_adaptive["gain"])
    undefended = [r for r in records if r["setting"] == "undefended"]
    non_adaptive = [r for r in records if r["setting"] == "non-adaptive"]
    for a, b in zip(undefended, non_adaptive, strict=True):  # the same attacked image
        assert a["attack_seconds"] == b["attack_seconds"] and a["linf"] == b["linf"]


def test_cli_markdown_shows_the_json_numbers(report: dict) -> None:
    markdown = report["markdown"]
    assert markdown.startswith("# Adaptive attacks on metric(defense(x))")
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 9
    for row in report["json"]["rows"]:
        assert f"{row['gain']:.2f}" in markdown
    assert markdown.count("<=3x non-adaptive") == 4


@pytest.mark.parametrize(
    "extra",
    [
        ["--limit", "0"],
        ["--iterations", "0"],
        ["--eot", "0"],
        ["--crop", "-1"],
        ["--alpha", "0"],
        ["--eps", "0"],
        ["--eps", "four"],
        ["--threads", "0"],
        ["--evade-weight", "0"],
        ["--adaptive", "full,fast"],
        ["--adaptive", ","],
    ],
)
def test_cli_refuses_bad_options(extra: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        adaptive_eval.parse_args(extra)
    assert info.value.code == 2
    assert extra[0] in capsys.readouterr().err


def test_cli_names_a_missing_image_folder(tmp_path: Path, tiny_weights: Path) -> None:
    argv = ["--images", str(tmp_path / "missing"), "--weights", str(tiny_weights)]
    with pytest.raises(SystemExit, match="adaptive_eval.py: error: not a folder"):
        adaptive_eval.main(argv)


def test_cli_refuses_the_evasion_attack_without_a_detector(
    tmp_path: Path, tiny_weights: Path, toy_standin_folder: Path
) -> None:
    save_image(torch.rand(3, 16, 16), tmp_path / "images" / "a.png")
    argv = ["--images", str(tmp_path / "images"), "--weights", str(tiny_weights)]
    argv += ["--metric", str(toy_standin_folder), "--adaptive", "evade"]
    argv += ["--t-star", "20", "--steps", "2", "--gate", "0", "--t-star-max", "0"]
    argv += ["--output", str(tmp_path / "out" / "a.md")]
    with pytest.raises(SystemExit, match="--adaptive evade attacks the perturbation detector;"):
        adaptive_eval.main(argv)
    assert not (tmp_path / "out").exists()


def test_a_ramped_defense_without_gate_gets_the_evasion_attack(tiny_weights: Path) -> None:
    from purifier import DiffusionPurifier, PerturbationDetector, PurifierConfig

    torch.manual_seed(0)
    detector = PerturbationDetector((4, 4, 4, 4)).eval()
    base = DiffusionPurifier.from_pretrained(tiny_weights, "cpu", PurifierConfig(**KNOBS))
    config = PurifierConfig(**{**KNOBS, "t_star_max": KNOBS["t_star"] + 20})
    ramped = DiffusionPurifier(base.model, dict(base.scheduler.config), config, 0, detector)
    records = adaptive_eval.evaluate_image(
        "a.png", rand(1, 3, 16, 16, seed=5), ToyMetric().eval(), ramped, 10 / 255,
        iterations=1, alpha=2 / 255, eot=1, seed=0, adaptive=(adaptive_eval.EVADE,),
    )  # fmt: skip
    assert [r.setting for r in records][-1] == adaptive_eval.EVADE
