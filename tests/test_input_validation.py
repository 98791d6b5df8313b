"""Input validation at every public entry point: ``image_checks.check_images`` and its users
(``Defense.apply_defense``, ``DiffusionPurifier``, ``MetricModel``, the attacks, the classical
defenses, ``test.py``) and the file side (``load_image``, the purify CLI), which converts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from attacks import make_attack
from common.devices import resolve_device
from common.image_checks import RANGE_SLACK, check_images
from common.image_io import ImageReadError, load_image, save_image
from defense import Defense
from defenses import make_defense
from model import MetricModel
from purifier import PurifierConfig
from purifier.cli import main as purify_main
from purifier.tiling import tiled_apply

KNOBS = {"t_star": 20, "steps": 2}
# Few, tiny examples: the suite must stay fast on a shared 2-core machine.
FAST = settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


pytestmark = pytest.mark.usefixtures("provisional_defaults")


def rand(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


# --- the central check: every bad input names its problem and the fix -------------------------

BAD_INPUTS = {
    "numpy": (np.zeros((1, 3, 8, 8), np.float32), r"must be a torch\.Tensor.*torch\.from_numpy"),
    "list": ([[0.5]], r"must be a torch\.Tensor.*got list"),
    "no batch axis": (torch.zeros(3, 8, 8), r"got \(3, 8, 8\): add the batch axis"),
    "2-D": (torch.zeros(8, 8), r"shape \(B, 3, H, W\), got \(8, 8\) \(2-D\)"),
    "HWC image": (
        torch.zeros(8, 6, 3),
        r"\(8, 6, 3\): one \(H, W, C\) image\? use images\.permute",
    ),
    "3-D": (torch.zeros(8, 6, 5), r"got \(8, 6, 5\) \(3-D\)$"),
    "5-D": (torch.zeros(1, 1, 3, 8, 8), r"\(5-D\)"),
    "grey": (torch.zeros(1, 1, 8, 8), r"1 channel \(grey\).*expand\(-1, 3, -1, -1\)"),
    "rgba": (torch.zeros(1, 4, 8, 8), r"4 channels \(RGBA\?\).*images\[:, :3\]"),
    "2 channels": (torch.zeros(1, 2, 8, 8), r"shape \(B, 3, H, W\), got \(1, 2, 8, 8\)$"),
    "channels-last": (
        torch.zeros(1, 8, 8, 3),
        r"channels-last\? use images\.permute\(0, 3, 1, 2\)",
    ),
    "uint8": (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), r"float tensor.*uint8: divide by 255"),
    "int64": (torch.zeros(1, 3, 8, 8, dtype=torch.int64), r"float .* got dtype torch\.int64$"),
    "bool": (torch.zeros(1, 3, 8, 8, dtype=torch.bool), r"got dtype torch\.bool"),
    "empty batch": (torch.zeros(0, 3, 8, 8), r"empty: batch size 0"),
    "zero height": (torch.zeros(1, 3, 0, 8), r"empty: zero height or width"),
    "zero width": (torch.zeros(1, 3, 8, 0), r"empty: zero height or width"),
    "nan": (torch.full((1, 3, 8, 8), float("nan")), r"NaN or Inf \(192 NaN, 0 Inf values\)"),
    "inf": (torch.full((1, 3, 8, 8), float("inf")), r"NaN or Inf \(0 NaN, 192 Inf values\)"),
    "-inf": (torch.full((1, 3, 8, 8), -float("inf")), r"NaN or Inf \(0 NaN, 192 Inf"),
    "above 1": (
        torch.full((1, 3, 8, 8), 1.5),
        r"must lie in \[0, 1\], got values in \[1\.5, 1\.5\]$",
    ),
    "0..255": (torch.full((1, 3, 8, 8), 255.0), r"\[0, 1\].*divide by 255"),
    "-1..1": (torch.linspace(-1, 1, 192).reshape(1, 3, 8, 8), r"\[0, 1\].*\(images \+ 1\) / 2"),
    "far below 0": (torch.full((1, 3, 8, 8), -3.0), r"values in \[-3, -3\]$"),
    "overshoot": (
        torch.tensor([0.05, 1.000002], dtype=torch.float64).repeat(96).reshape(1, 3, 8, 8),
        r"values in \[0\.05, 1\.000002\] \(a small overshoot.*images\.clamp\(0, 1\)\)$",
    ),
    "undershoot": (
        torch.tensor([-2e-6, 0.95], dtype=torch.float64).repeat(96).reshape(1, 3, 8, 8),
        r"values in \[-2e-06, 0\.95\] \(a small overshoot",
    ),
}


@pytest.mark.parametrize(("bad", "message"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_check_images_names_the_problem_and_the_fix(bad: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_images(bad, "images")  # type: ignore[arg-type]


def test_the_name_appears_in_the_message() -> None:
    with pytest.raises(ValueError, match=r"^attacked images contains NaN"):
        check_images(torch.full((1, 3, 2, 2), float("nan")), "attacked images")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_every_float_dtype_and_rounding_slack_pass(dtype: torch.dtype) -> None:
    check_images(rand(2, 3, 5, 7, dtype=dtype))
    check_images(
        torch.tensor([0.0, 1.0], dtype=torch.float64).reshape(1, 1, 1, 2).expand(1, 3, 1, 2)
    )
    edge = torch.tensor([-RANGE_SLACK / 2, 1 + RANGE_SLACK / 2], dtype=torch.float64)
    check_images(edge.reshape(1, 1, 1, 2).expand(1, 3, 1, 2))


def test_non_contiguous_and_grad_inputs_pass_and_are_untouched() -> None:
    x = rand(1, 5, 6, 3).permute(0, 3, 1, 2).requires_grad_()
    before = x.detach().clone()
    check_images(x)
    assert torch.equal(x.detach(), before) and x.grad is None


@FAST
@given(
    batch=st.integers(1, 3),
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_valid_batches_of_any_size_pass(batch: int, height: int, width: int, seed: int) -> None:
    check_images(rand(batch, 3, height, width, seed=seed))


@FAST
@given(
    shape=st.tuples(st.integers(1, 2), st.integers(1, 6), st.integers(1, 6)),
    where=st.integers(0, 10**6),
    value=st.sampled_from([float("nan"), float("inf"), -float("inf"), 1.01, -0.01, 7.0]),
)
def test_one_bad_value_anywhere_is_found(
    shape: tuple[int, int, int], where: int, value: float
) -> None:
    batch, height, width = shape
    x = rand(batch, 3, height, width).flatten()
    x[where % x.numel()] = value
    with pytest.raises(ValueError, match=r"NaN or Inf|must lie in \[0, 1\]"):
        check_images(x.reshape(batch, 3, height, width))


@FAST
@given(
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=6).filter(
        lambda s: not (len(s) == 4 and s[1] == 3 and 0 not in s)
    )
)
def test_any_other_shape_is_refused(shape: list[int]) -> None:
    with pytest.raises(ValueError, match=r"shape \(B, 3, H, W\)|empty"):
        check_images(torch.full(shape, 0.5))


# --- every entry point uses it -----------------------------------------------------------------

REPRESENTATIVE = [
    "numpy",
    "no batch axis",
    "grey",
    "rgba",
    "uint8",
    "empty batch",
    "nan",
    "above 1",
]


ENTRY_POINTS = ["Defense.apply_defense", "DiffusionPurifier", "MetricModel", "attack", "blur"]


@pytest.fixture(scope="module")
def entry_points(tiny_defense: Defense, tiny_metric: MetricModel) -> dict[str, Callable]:
    return {
        "Defense.apply_defense": tiny_defense.apply_defense,
        "DiffusionPurifier": tiny_defense.purifier,
        "MetricModel": tiny_metric,
        "attack": make_attack("fgsm", tiny_metric),
        "blur": make_defense("blur", torch.device("cpu")).apply_defense,
    }


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("case", REPRESENTATIVE)
def test_every_entry_point_refuses_bad_input_with_the_same_message(
    entry_points: dict[str, Callable], entry: str, case: str
) -> None:
    bad, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message):
        entry_points[entry](bad)


# --- Defense / purifier: any size, any float dtype ---------------------------------------------


@pytest.mark.parametrize(
    "shape", [(1, 3, 1, 1), (1, 3, 1, 13), (1, 3, 11, 1), (2, 3, 3, 5), (1, 3, 2, 2), (1, 3, 7, 9)]
)
def test_defense_handles_tiny_and_odd_sizes(tiny_defense: Defense, shape: tuple[int, ...]) -> None:
    x = rand(*shape)
    with torch.no_grad():
        out = tiny_defense.apply_defense(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_defense_returns_the_input_dtype(tiny_defense: Defense, dtype: torch.dtype) -> None:
    with torch.no_grad():
        out = tiny_defense.apply_defense(rand(1, 3, 6, 10, dtype=dtype))
    assert out.dtype == dtype and out.min() >= 0 and out.max() <= 1


def test_unsharp_masking_handles_a_single_pixel(tiny_weights: Path) -> None:
    config = PurifierConfig(unsharp_amount=1.0, unsharp_radius=2.0, **KNOBS)
    sharp = Defense(weights=tiny_weights, seed=0, config=config)
    with torch.no_grad():
        assert sharp.apply_defense(rand(1, 3, 1, 1)).shape == (1, 3, 1, 1)


@FAST
@given(
    batch=st.integers(1, 2),
    height=st.integers(1, 12),
    width=st.integers(1, 12),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_defense_property_shape_dtype_range(
    tiny_defense: Defense, batch: int, height: int, width: int, dtype: torch.dtype, seed: int
) -> None:
    x = rand(batch, 3, height, width, dtype=dtype, seed=seed)
    before = x.clone()
    with torch.no_grad():
        out = tiny_defense.apply_defense(x)
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert torch.equal(x, before)  # the input is never modified in place


def test_large_photos_are_tiled_into_bounded_pieces() -> None:
    """The purify CLI's route for a 4000 x 3000 photo: no piece exceeds the tile."""
    seen: list[tuple[int, int]] = []

    def record(piece: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(piece.shape[-2:]))
        return piece

    photo = torch.full((1, 1, 1, 1), 0.25).expand(1, 1, 3000, 4000)
    out = tiled_apply(photo, record, tile=512, overlap=32)
    assert out.shape == photo.shape and torch.equal(out, photo.contiguous())
    assert set(seen) == {(512, 512)} and len(seen) == 7 * 9


# --- MetricModel -------------------------------------------------------------------------------


@FAST
@given(
    batch=st.integers(1, 2),
    height=st.integers(1, 20),
    width=st.integers(1, 20),
    dtype=st.sampled_from([torch.float16, torch.float32, torch.float64]),
)
def test_metric_scores_any_size_and_float_dtype(
    tiny_metric: MetricModel, batch: int, height: int, width: int, dtype: torch.dtype
) -> None:
    with torch.no_grad():
        score = tiny_metric(rand(batch, 3, height, width, dtype=dtype))
    assert score.shape == (batch, 1) and score.dtype == torch.float32
    assert torch.isfinite(score).all()


# --- files are converted: grey -> RGB, alpha dropped, 16 bit kept ------------------------------


def write(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (Image.fromarray(array, mode) if mode else Image.fromarray(array)).save(path)
    return path


def test_load_image_converts_grey_alpha_palette_and_16_bit(tmp_path: Path) -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    rgba = np.dstack([np.full((2, 2), v, np.uint8) for v in (10, 20, 30, 0)])
    deep = (np.arange(6, dtype=np.uint16).reshape(2, 3) * 13107).astype(np.uint16)
    loaded = load_image(write(tmp_path / "g.png", grey))
    assert loaded.shape == (3, 3, 4) and loaded.dtype == torch.float32
    assert torch.equal(loaded[0], loaded[2]) and loaded[1, 2, 3] == pytest.approx(220 / 255)
    loaded = load_image(write(tmp_path / "a.png", rgba))  # alpha 0 everywhere: dropped, not used
    assert loaded[:, 0, 0].tolist() == pytest.approx([10 / 255, 20 / 255, 30 / 255])
    loaded = load_image(write(tmp_path / "d.png", deep))
    assert loaded.shape == (3, 2, 3) and loaded[0, 1, 2] == pytest.approx(65535 / 65535)
    palette = Image.fromarray(rgba[..., :3]).convert("P")
    palette.save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").shape == (3, 2, 2)


def test_load_image_refuses_float_pixels_it_cannot_scale(tmp_path: Path) -> None:
    path = write(tmp_path / "f.tif", np.full((4, 5), 0.5, np.float32))  # PIL mode F
    with pytest.raises(ImageReadError, match=r"f\.tif.*mode F\) have no standard range"):
        load_image(path)


def test_purify_cli_takes_grey_rgba_and_tiny_images(tiny_weights: Path, tmp_path: Path) -> None:
    source = tmp_path / "in"
    write(source / "grey.png", np.full((5, 7), 128, np.uint8))
    write(source / "rgba.png", np.full((6, 3, 4), 200, np.uint8))
    write(source / "dot.png", np.full((1, 1, 3), 50, np.uint8))
    write(source / "line.png", np.full((1, 9, 3), 50, np.uint8))
    save_image(rand(3, 9, 1), source / "column.png")
    out = tmp_path / "out"
    argv = [str(source), str(out), "--weights", str(tiny_weights), "-q", "--seed", "0"]
    assert purify_main([*argv, "--t-star", "20", "--steps", "2"]) == 0
    sizes, modes = {}, set()
    for path in out.iterdir():
        with Image.open(path) as img:
            sizes[path.name] = img.size
            modes.add(img.mode)
    assert sizes == {
        "grey.png": (7, 5),
        "rgba.png": (3, 6),
        "dot.png": (1, 1),
        "line.png": (9, 1),
        "column.png": (1, 9),
    }
    assert modes == {"RGB"}


# --- test.py: images as files, defense output as tensors ---------------------------------------


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    from evaluation import harness as module

    return module


def test_harness_converts_grey_and_rgba_files(harness: ModuleType, tmp_path: Path) -> None:
    write(tmp_path / "reference" / "x.png", np.full((16, 16, 4), 120, np.uint8))
    write(tmp_path / "attacked" / "a" / "x.png", np.full((16, 16), 125, np.uint8))
    pairs = harness.collect_pairs(tmp_path)
    (record,) = harness.evaluate(
        pairs,
        make_defense("none", torch.device("cpu")),
        lambda x: x.mean((1, 2, 3)),
        progress=False,
    )
    assert record.source_score == pytest.approx(120 / 255)
    assert record.defense_score == pytest.approx(125 / 255)


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (lambda x: (x * 255).to(torch.uint8), "divide by 255"),
        (lambda x: x[:, :1], "1 channel"),
        (lambda x: x[0], "add the batch axis"),
        (lambda x: x * float("nan"), "NaN"),
    ],
)
def test_harness_names_bad_defense_output(
    harness: ModuleType, tmp_path: Path, returned: Callable, message: str
) -> None:
    write(tmp_path / "reference" / "x.png", np.full((8, 8, 3), 120, np.uint8))
    write(tmp_path / "attacked" / "a" / "x.png", np.full((8, 8, 3), 125, np.uint8))

    class Broken:
        def apply_defense(self, images: torch.Tensor) -> torch.Tensor:
            return returned(images)

    with pytest.raises(ValueError, match=f"invalid output for .*x\\.png.*{message}"):
        harness.evaluate(harness.collect_pairs(tmp_path), Broken(), lambda x: x, progress=False)


@pytest.mark.slow
def test_purify_cli_on_a_4000_by_3000_photo(tiny_weights: Path, tmp_path: Path) -> None:
    save_image(rand(3, 3000, 4000), tmp_path / "in" / "photo.png")
    argv = [str(tmp_path / "in"), str(tmp_path / "out"), "--weights", str(tiny_weights), "-q"]
    assert purify_main([*argv, "--t-star", "20", "--steps", "2", "--seed", "0"]) == 0
    with Image.open(tmp_path / "out" / "photo.png") as img:
        assert img.size == (4000, 3000)


def test_resolve_device_names_what_is_wrong() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    for bad in ("cudaa", "gpu", "cuda:x", 3.5):
        with pytest.raises(ValueError, match="invalid device"):
            resolve_device(bad)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="CUDA"):
        resolve_device(f"cuda:{count}")
    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match="MPS"):
            resolve_device("mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            MetricModel("cuda")


# --- the Python API refuses what it cannot use (audit of stop 26) ------------------------------


def test_save_image_refuses_what_it_would_garble(tmp_path: Path) -> None:
    uint8 = (torch.linspace(0, 1, 48).reshape(3, 4, 4) * 255).round().to(torch.uint8)
    bad = {
        "uint8": (uint8, r"got dtype torch\.uint8: divide by 255"),
        "nan": (torch.full((3, 2, 2), float("nan")), "NaN or Inf"),
        "numpy": (np.zeros((3, 2, 2), np.float32), r"\(3, H, W\) torch\.Tensor, got \(3, 2, 2\)"),
        "batch": (torch.zeros(1, 3, 2, 2), r"\(3, H, W\) torch\.Tensor, got \(1, 3, 2, 2\)"),
        "range": (torch.full((3, 2, 2), 2.0), r"must lie in \[0, 1\]"),
    }
    for name, (image, message) in bad.items():
        with pytest.raises(ValueError, match=message):
            save_image(image, tmp_path / name / "x.png")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown image extension: '.xyz'"):
        save_image(torch.zeros(3, 2, 2), tmp_path / "ext" / "x.xyz")
    assert not list(tmp_path.iterdir())  # nothing written, no folder made


def test_purifier_api_refuses_ints_dicts_and_unknown_devices(tiny_weights: Path) -> None:
    from purifier import DiffusionPurifier, PerturbationDetector

    config = PurifierConfig(t_star=20, steps=2, ensemble=2)
    purifier = DiffusionPurifier.from_pretrained(tiny_weights, config=config, seed=0)
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="generator must be a torch.Generator or None, got int"):
        purifier(x, generator=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="generator must be"):
        purifier.purify_all(x, generator=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="config must be a PurifierConfig, got dict"):
        DiffusionPurifier.from_pretrained(tiny_weights, config={"t_star": 20})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="config must be a PurifierConfig, got dict"):
        Defense(weights=tiny_weights, config={"t_star": 20})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="invalid device 'gpu'"):
        DiffusionPurifier.from_pretrained(tiny_weights, "gpu", config=config)
    with pytest.raises(ValueError, match="invalid device 'gpu'"):
        make_defense("none", "gpu")
    with pytest.raises(ValueError, match=r"an int seed must lie in \[-2\*\*63, 2\*\*64\)"):
        Defense(weights=tiny_weights, t_star=20, steps=2, t_star_max=0, seed=2**64)
    detector = PerturbationDetector((4, 4, 4, 4))
    for tile in (None, 8.5, 4):
        with pytest.raises(ValueError, match="tile must be an int >= 8"):
            detector.estimate(x, tile=tile)  # type: ignore[arg-type]


def test_classical_defenses_check_their_knobs_when_built() -> None:
    from defenses.classical import JpegDefense, ResizeDefense

    with pytest.raises(ValueError, match="scale must be a number in"):
        ResizeDefense(scale="0.5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="JPEG quality must be an int in"):
        JpegDefense(quality=50.5)  # type: ignore[arg-type]


def test_numpy_knobs_become_plain_numbers() -> None:
    import json

    config = PurifierConfig(t_star=np.int64(60), steps=np.int32(1), gate=np.float32(0.25))
    assert type(config.t_star) is int and type(config.gate) is float
    assert json.loads(json.dumps(config.to_dict()))["t_star"] == 60
    assert config == PurifierConfig(t_star=60, steps=1, gate=0.25)


def test_resolve_device_refuses_a_cuda_index_beyond_the_device_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match=r"only 2 CUDA device\(s\) \(0\.\.1\)"):
        resolve_device("cuda:2")
