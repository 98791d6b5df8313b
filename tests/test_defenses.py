"""Classical defenses and the defense registry."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

import defense
from defense import Defense
from defenses import DEFAULT_DEFENSE, DEFENSES, make_defense, register_defense
from defenses.classical import (
    DownUpResizeDefense,
    GaussianBlurDefense,
    IdentityDefense,
    JpegDefense,
    MedianDefense,
    ResizeDefense,
    gaussian_kernel_1d,
)
from defenses.registry import defense_options

CLASSICAL = ["none", "resize", "resize_updown", "jpeg", "blur", "median"]
DIFFERENTIABLE = ["none", "resize", "resize_updown", "blur", "median"]


def random_images(shape: tuple[int, ...] = (2, 3, 17, 23), seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def test_registry_lists_classical_and_project_defense(
    tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(defense, "WEIGHTS_DIR", tiny_weights.parent)
    assert set(CLASSICAL) | {"ddpm"} <= set(DEFENSES)
    assert DEFAULT_DEFENSE == "ddpm"
    built = make_defense("ddpm", "cpu")
    assert isinstance(built, Defense) and built.weights == tiny_weights


def test_unknown_defense_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown defense 'nope'.*blur"):
        make_defense("nope")


def test_defense_options_are_the_factories_keywords() -> None:
    assert defense_options("jpeg") == {"quality"}
    assert defense_options("resize") == {"scale"}
    assert defense_options("blur") == {"sigma"}
    assert defense_options("median") == set()
    assert defense_options("diffpure") == defense_options("ddpm") == {"weights", "seed"}
    with pytest.raises(ValueError, match="unknown defense 'nope'"):
        defense_options("nope")


def test_make_defense_passes_options_to_the_factory() -> None:
    assert make_defense("jpeg", quality=75).quality == 75
    assert make_defense("resize", "cpu", scale=0.75).scale == 0.75
    assert make_defense("blur", sigma=1.5).sigma == 1.5
    jpeg_message = r"'jpeg' takes no option\(s\) \['scale'\]; its options: \['quality'\]"
    with pytest.raises(ValueError, match=jpeg_message):
        make_defense("jpeg", scale=0.5)
    median_message = r"'median' takes no option\(s\) \['size'\]; its options: none"
    with pytest.raises(ValueError, match=median_message):
        make_defense("median", size=5)
    with pytest.raises(ValueError, match="JPEG quality must be an int"):
        make_defense("jpeg", quality=0.5)  # values checked by the defense itself


def test_register_defense_adds_and_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_defense("blur", GaussianBlurDefense)
    try:
        register_defense("blur_wide", lambda device: GaussianBlurDefense(device, sigma=2.0))
        assert make_defense("blur_wide").sigma == 2.0
    finally:
        DEFENSES.pop("blur_wide", None)


def test_one_registry_entry_reaches_the_benchmark(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new defense is its file plus one ``DEFENSES`` line: the entry alone puts it in
    ``test.py --defense``, the benchmark's default list, its reports' labels and its specs."""
    from defenses.registry import CLASSICAL, RegisteredDefense, benchmark_defenses
    from defenses.specs import build_defense, defense_label

    entry = RegisteredDefense(GaussianBlurDefense, "Gaussian blur, wide", CLASSICAL)
    monkeypatch.setitem(DEFENSES, "blur_wide", entry)
    assert benchmark_defenses().index("blur_wide") < benchmark_defenses().index("ddpm")
    assert defense_label("blur_wide") == "Gaussian blur, wide"
    assert build_defense("blur_wide:sigma=2.0", "cpu").sigma == 2.0
    with pytest.raises(ValueError, match="already registered"):
        register_defense("blur_wide", GaussianBlurDefense)


@pytest.mark.parametrize("name", CLASSICAL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_shape_dtype_device_range_kept(name: str, dtype: torch.dtype) -> None:
    images = random_images().to(dtype)
    out = make_defense(name, "cpu").apply_defense(images)
    # the competition's baseline returns the half-size image; every other defense keeps it
    assert out.shape == ((2, 3, 8, 11) if name == "resize" else images.shape)
    assert out.dtype == dtype
    assert out.device == images.device
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", CLASSICAL)
def test_deterministic_and_input_untouched(name: str) -> None:
    images = random_images()
    before = images.clone()
    defense = make_defense(name)
    first, second = defense.apply_defense(images), defense.apply_defense(images)
    assert torch.equal(first, second)
    assert torch.equal(images, before)


@pytest.mark.parametrize("name", CLASSICAL)
@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((1, 3, 8, 8), dtype=np.float32), "torch.Tensor"),
        (torch.zeros(3, 8, 8), r"\(B, 3, H, W\)"),
        (torch.zeros(1, 1, 8, 8), r"\(B, 3, H, W\)"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "float"),
        (torch.full((1, 3, 8, 8), 1.5), r"\[0, 1\]"),
        (torch.full((1, 3, 8, 8), -0.5), r"\[0, 1\]"),
        (torch.full((1, 3, 8, 8), math.nan), "NaN"),
    ],
)
def test_bad_input_is_a_value_error(name: str, bad: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_defense(name).apply_defense(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_gradients_flow(name: str) -> None:
    images = random_images((1, 3, 8, 8)).requires_grad_(True)
    make_defense(name).apply_defense(images).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("make", "bad"),
    [
        (lambda: ResizeDefense(scale=0.0), "scale"),
        (lambda: ResizeDefense(scale=1.5), "scale"),
        (lambda: JpegDefense(quality=0), "quality"),
        (lambda: JpegDefense(quality=101), "quality"),
        (lambda: GaussianBlurDefense(sigma=0.0), "sigma"),
    ],
)
def test_bad_hyperparameters(make, bad: str) -> None:
    with pytest.raises(ValueError, match=bad):
        make()


@pytest.mark.parametrize("name", ["blur", "median"])
def test_reflect_padding_needs_two_pixels(name: str) -> None:
    with pytest.raises(ValueError, match="at least 2x2"):
        make_defense(name).apply_defense(torch.zeros(1, 3, 1, 8))


def test_repr_shows_hyperparameters() -> None:
    assert repr(ResizeDefense()) == "ResizeDefense(scale=0.5)"
    assert repr(JpegDefense()) == "JpegDefense(quality=50)"
    assert repr(GaussianBlurDefense()) == "GaussianBlurDefense(sigma=0.8, size=3)"
    assert repr(MedianDefense()) == "MedianDefense(size=3)"


def test_identity_is_exact_copy() -> None:
    images = random_images()
    out = IdentityDefense().apply_defense(images)
    assert torch.equal(out, images)
    assert out.data_ptr() != images.data_ptr()


# --- resize -------------------------------------------------------------------------------


def test_resize_returns_the_half_size_image_as_the_competition_baseline() -> None:
    # the organisers' MetricModel.defense: Resize((int(0.5 * H), int(0.5 * W))), returned as is
    out = make_defense("resize").apply_defense(random_images((2, 3, 65, 97)))
    assert out.shape == (2, 3, 32, 48)
    assert ResizeDefense(scale=0.75).apply_defense(random_images((1, 3, 65, 97))).shape == (
        1,
        3,
        48,
        72,
    )


def test_resize_is_the_antialiased_triangle_filter() -> None:
    # a ramp 0, 1, 2, 3 (/3) halved: each output pixel is the triangle-weighted mean of its
    # footprint (weights 3/4, 3/4, 1/4 over the pixels inside): 1.25/1.75 and 4/1.75, /3
    ramp = (torch.arange(4.0) / 3).expand(1, 3, 2, 4).clone()
    out = ResizeDefense().apply_defense(ramp)
    expected = torch.tensor([1.25 / 1.75, 4 / 1.75]) / 3
    torch.testing.assert_close(out, expected.expand(1, 3, 1, 2), atol=1e-6, rtol=0)


def test_resize_of_constant_is_constant() -> None:
    images = torch.full((1, 3, 15, 20), 0.3)
    out = ResizeDefense().apply_defense(images)
    torch.testing.assert_close(out, torch.full((1, 3, 7, 10), 0.3), atol=1e-6, rtol=0)


def test_resize_removes_pixel_checkerboard() -> None:
    yy, xx = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    checker = ((yy + xx) % 2).float().expand(1, 3, 16, 16)
    out = ResizeDefense().apply_defense(checker)
    assert out.shape == (1, 3, 8, 8) and (out - 0.5).abs().max() < 0.02


def test_resize_keeps_at_least_one_pixel() -> None:
    assert ResizeDefense().apply_defense(random_images((1, 3, 1, 5))).shape == (1, 3, 1, 2)


def test_down_up_resize_keeps_the_shape_and_is_the_baseline_resized_back() -> None:
    images = random_images((2, 3, 65, 97))
    out = make_defense("resize_updown").apply_defense(images)
    assert out.shape == images.shape
    half = ResizeDefense().apply_defense(images)
    back = torch.nn.functional.interpolate(
        half, size=(65, 97), mode="bilinear", align_corners=False, antialias=True
    )
    torch.testing.assert_close(out, back.clamp(0, 1), atol=0, rtol=0)
    assert repr(DownUpResizeDefense(scale=0.75)) == "DownUpResizeDefense(scale=0.75)"


# --- JPEG ---------------------------------------------------------------------------------


def test_jpeg_keeps_mid_grey_exactly() -> None:
    images = torch.full((2, 3, 16, 16), 128 / 255)
    torch.testing.assert_close(JpegDefense().apply_defense(images), images, atol=0, rtol=0)


def test_jpeg_outputs_8_bit_levels_and_changes_noise() -> None:
    images = random_images((1, 3, 16, 16))
    out = JpegDefense().apply_defense(images)
    levels = out * 255
    torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)
    assert (out - images).abs().mean() > 0.05
    assert out.grad_fn is None


# --- blur ---------------------------------------------------------------------------------


def test_gaussian_taps_pinned() -> None:
    # exp(-1 / (2 * 0.8^2)) = 0.4578333617716143; taps = [g, 1, g] / (1 + 2 g)
    taps = gaussian_kernel_1d(0.8, 3)
    torch.testing.assert_close(
        taps,
        torch.tensor([0.2389942656, 0.5220114688, 0.2389942656], dtype=torch.float64),
        atol=1e-9,
        rtol=0,
    )


def test_blur_impulse_response_is_the_kernel() -> None:
    images = torch.zeros(1, 3, 5, 5)
    images[..., 2, 2] = 1.0
    out = GaussianBlurDefense().apply_defense(images)
    taps = gaussian_kernel_1d(0.8, 3).float()
    expected = torch.zeros(5, 5)
    expected[1:4, 1:4] = torch.outer(taps, taps)
    torch.testing.assert_close(out[0, 1], expected, atol=1e-7, rtol=0)


def test_blur_of_constant_is_constant() -> None:
    images = torch.full((1, 3, 9, 7), 0.7)
    torch.testing.assert_close(
        GaussianBlurDefense().apply_defense(images), images, atol=1e-6, rtol=0
    )


def test_blur_matches_scipy_with_mirror_padding() -> None:
    images = random_images((1, 3, 12, 10), seed=3)
    out = GaussianBlurDefense().apply_defense(images)
    taps = gaussian_kernel_1d(0.8, 3).numpy()
    kernel = np.outer(taps, taps)
    for c in range(3):
        expected = ndimage.correlate(images[0, c].double().numpy(), kernel, mode="mirror")
        np.testing.assert_allclose(out[0, c].numpy(), expected, atol=1e-6)


# --- median -------------------------------------------------------------------------------


def test_median_of_known_patch() -> None:
    patch = torch.tensor([[0.1, 0.9, 0.3], [0.7, 0.0, 0.2], [0.8, 0.4, 0.6]])
    out = MedianDefense().apply_defense(patch.expand(1, 3, 3, 3))[0, 0]
    # Centre: median of all nine values.
    assert out[1, 1].item() == pytest.approx(0.4, abs=1e-7)
    # Corners with reflect padding see the centre 4x, each adjacent edge 2x, the corner once:
    # (0, 0): 0,0,0,0,0.1,0.7,0.7,0.9,0.9 -> 0.1;  (2, 2): 0,0,0,0,0.2,0.2,0.4,0.4,0.6 -> 0.2.
    assert out[0, 0].item() == pytest.approx(0.1, abs=1e-7)
    assert out[2, 2].item() == pytest.approx(0.2, abs=1e-7)


def test_median_removes_impulse() -> None:
    images = torch.zeros(1, 3, 5, 5)
    images[..., 2, 2] = 1.0
    assert torch.equal(MedianDefense().apply_defense(images), torch.zeros(1, 3, 5, 5))


def test_median_matches_scipy_with_mirror_padding() -> None:
    images = random_images((2, 3, 9, 11), seed=4)
    out = MedianDefense().apply_defense(images)
    expected = ndimage.median_filter(images.numpy(), size=(1, 1, 3, 3), mode="mirror")
    np.testing.assert_array_equal(out.numpy(), expected)
