"""Property tests (issue 6, part 1): every public image entry point is total over tensors.

``tests/test_input_validation.py`` checks valid inputs and each bad input separately; here one
hypothesis strategy mixes them (any rank and channel count, batch 0-3, sides 0-40, float and
integer dtypes, values in and out of [0, 1], NaN and Inf) and the property is: the call either
returns a finite result of the documented shape (images in [0, 1], scores ``(B, 1)``) or raises
``ValueError``, never another exception, and it answers the same as ``check_images``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.image_checks import check_images
from defense import Defense
from model import MetricModel

PROPERTY = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
SPECIAL = [float("nan"), float("inf"), -float("inf"), -0.5, 1.5, 255.0, -1e-3, 1 + 1e-3]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.uint8, torch.int64]


pytestmark = pytest.mark.usefixtures("provisional_defaults")


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    """Mostly ``(B, 3, H, W)`` with B 1-3 and odd or even sides 1-40, in [0, 1]; sometimes
    another shape (rank 2-5, 1 or 4 channels, an empty axis), another dtype, values outside
    [0, 1] or a few NaN/Inf."""
    if draw(st.integers(0, 3)):
        shape = [draw(st.integers(1, 3)), 3, draw(st.integers(1, 40)), draw(st.integers(1, 40))]
    else:
        shape = draw(st.lists(st.integers(0, 6), min_size=2, max_size=5))
        if len(shape) >= 2 and draw(st.booleans()):
            shape[1] = draw(st.sampled_from([1, 3, 4]))
    seed = draw(st.integers(0, 2**16))
    x = torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if x.numel() and draw(st.integers(0, 2)) == 0:
        flat = x.flatten()
        for _ in range(draw(st.integers(1, 3))):
            flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from(SPECIAL))
        x = flat.reshape(shape)
    dtype = draw(st.sampled_from(DTYPES)) if draw(st.integers(0, 4)) == 0 else torch.float32
    if dtype in (torch.uint8, torch.int64):
        return (x.nan_to_num(0.0, 0.0, 0.0).clamp(0, 1) * 255).to(dtype)
    return x.to(dtype)


def valid(x: torch.Tensor) -> bool:
    try:
        check_images(x)
    except ValueError:
        return False
    return True


def outcome(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor | None:
    """``fn(x)`` under no_grad, or None if it raised ``ValueError`` (anything else fails)."""
    before = x.clone()
    try:
        with torch.no_grad():
            out = fn(x)
    except ValueError:
        out = None
    assert torch.equal(x, before) or (x.is_floating_point() and x.isnan().any()), "input changed"
    return out


@PROPERTY
@given(x=tensors())
def test_check_images_accepts_exactly_the_contract(x: torch.Tensor) -> None:
    expected = (
        x.dim() == 4
        and x.shape[1] == 3
        and x.numel() > 0
        and x.is_floating_point()
        and bool(torch.isfinite(x).all())
        and float(x.min()) >= -1e-6
        and float(x.max()) <= 1 + 1e-6
    )
    assert valid(x) == expected


@PROPERTY
@given(x=tensors())
def test_defense_returns_images_or_raises_value_error(
    tiny_defense: Defense, x: torch.Tensor
) -> None:
    out = outcome(tiny_defense.apply_defense, x)
    assert (out is not None) == valid(x)
    if out is not None:
        assert out.shape == x.shape and out.dtype == x.dtype
        assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@PROPERTY
@given(x=tensors())
def test_metric_returns_scores_or_raises_value_error(
    tiny_metric: MetricModel, x: torch.Tensor
) -> None:
    out = outcome(tiny_metric, x)
    assert (out is not None) == valid(x)
    if out is not None:
        assert out.shape == (x.shape[0], 1) and out.dtype == torch.float32
        assert torch.isfinite(out).all()
