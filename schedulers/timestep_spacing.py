"""Which training steps a shortened reverse chain keeps (the idea of guided-diffusion's
``respace.py``: a shortened schedule is fully described by the list of steps it keeps).

Convention (diffusers' "trailing" spacing): step ``t`` is ``t + 1`` noising steps from the
clean image, the chain starts at ``t_star`` and its last kept step jumps straight to ``x_0``.
With ``steps`` kept steps the ``k``-th from the bottom (``k = 1..steps``) is

* uniform:   ``round((t_star + 1) * k / steps) - 1``
* quadratic: ``round((t_star + 1) * (k / steps) ** 2) - 1`` (denser near the clean end),

rounded half up in exact integer arithmetic, then pushed up where needed so the list is
strictly descending. The first entry is always
``t_star``. ``steps == 1`` is a single jump from ``t_star`` to ``x_0``; ``steps == t_star + 1``
keeps every step.
"""

from __future__ import annotations

import numbers

NUM_TRAIN_TIMESTEPS = 1000
SPACINGS = ("uniform", "quadratic")


def kept_timesteps(
    t_star: int,
    steps: int,
    spacing: str = "uniform",
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
) -> list[int]:
    """Descending list of ``steps`` training steps from ``t_star`` down toward 0."""
    _check_t_star(t_star, num_train_timesteps)
    if not _is_int(steps) or not 1 <= steps <= t_star + 1:
        raise ValueError(f"steps must be an integer in 1..t_star + 1 = {t_star + 1}, got {steps!r}")
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    power = 1 if spacing == "uniform" else 2
    ascending: list[int] = []
    for k in range(1, steps + 1):
        t = _round_half_up((t_star + 1) * k**power, steps**power) - 1
        floor = ascending[-1] + 1 if ascending else 0
        ascending.append(max(t, floor))
    return ascending[::-1]


def ddim_grid_stride(
    t_star: int, steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
) -> int:
    """Stride ``r`` of the DDIM "trailing" grid that holds ``t_star`` with ``steps`` steps below
    it: ``t_star + 1 == steps * r`` and ``r`` divides ``num_train_timesteps``. ValueError (naming
    the nearest valid ``t_star``) otherwise."""
    _check_t_star(t_star, num_train_timesteps)
    if not _is_int(steps) or not 1 <= steps <= t_star + 1:
        raise ValueError(f"steps must be an integer in 1..t_star + 1 = {t_star + 1}, got {steps!r}")
    stride, remainder = divmod(t_star + 1, steps)
    if remainder == 0 and num_train_timesteps % stride == 0:
        return stride
    nearest = nearest_ddim_t_star(t_star, steps, num_train_timesteps)
    raise ValueError(
        f"DDIM runs on an evenly spaced grid: t_star + 1 must be steps x a divisor of "
        f"{num_train_timesteps}; t_star={t_star} with steps={steps} is not on it "
        f"(nearest valid t_star: {nearest})"
    )


def nearest_ddim_t_star(
    t_star: int, steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
) -> int:
    """The ``t_star`` closest to the given one (ties: the smaller) that a DDIM grid with
    ``steps`` steps can start from, i.e. ``steps * r - 1`` with ``r`` dividing the number of
    training steps."""
    _check_t_star(t_star, num_train_timesteps)
    candidates = ddim_t_stars(steps, num_train_timesteps)
    return min(candidates, key=lambda c: (abs(c - t_star), c))


def ddim_t_stars(steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[int]:
    """Every ``t_star`` a DDIM grid with ``steps`` steps can start from, increasing:
    ``steps * r - 1`` for each ``r`` dividing the number of training steps."""
    if not _is_int(steps) or not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be an integer in 1..{num_train_timesteps}, got {steps!r}")
    divisors = [r for r in range(1, num_train_timesteps + 1) if num_train_timesteps % r == 0]
    candidates = [steps * r - 1 for r in divisors if 1 <= steps * r - 1 < num_train_timesteps]
    if not candidates:
        raise ValueError(f"no DDIM grid has {steps} steps below a t_star < {num_train_timesteps}")
    return candidates


def ddim_kept_timesteps(
    t_star: int, steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
) -> list[int]:
    """The tail of the DDIM trailing grid that starts at ``t_star``: ``[t_star, t_star - r, ...,
    r - 1]``. Equal to ``kept_timesteps(t_star, steps, "uniform")`` on such grids."""
    stride = ddim_grid_stride(t_star, steps, num_train_timesteps)
    return [int(t_star - i * stride) for i in range(steps)]


def _check_t_star(t_star: int, num_train_timesteps: int) -> None:
    if not _is_int(t_star) or not 1 <= t_star <= num_train_timesteps - 1:
        raise ValueError(
            f"t_star must be an integer in 1..{num_train_timesteps - 1}, got {t_star!r}"
        )


def _round_half_up(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` rounded half up, in exact integer arithmetic."""
    return (2 * numerator + denominator) // (2 * denominator)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
