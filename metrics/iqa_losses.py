"""Losses around Linearity-style quality regressors.

``norm_in_norm_loss`` is the loss of Li, Jiang and Jiang, "Norm-in-Norm Loss with Faster
Convergence and Better Performance for Image Quality Assessment", ACM MM 2020;
``linearity_loss`` combines it over Linearity's three outputs; ``ranking_hinge_loss`` is the
RankIQA-style constraint that a distorted copy scores below its source (Liu, van de Weijer
and Bagdanov, "RankIQA", ICCV 2017), measured in units of the batch's score spread;
``score_consistency_loss`` keeps a metric's score of a purified image at its clean
reference's (for fine-tuning purifiers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

EPS = 1e-8
LINEARITY_WEIGHTS = (0.1, 0.1, 1.0)
"""Linearity's weights for the losses of ``[regr6, regr7, regression]``."""


def _as_column(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() == 2 and x.shape[1] == 1:
        return x[:, 0]
    if x.dim() == 1:
        return x
    raise ValueError(f"{name} must have shape (N,) or (N, 1), got {tuple(x.shape)}")


def norm_in_norm_loss(
    pred: torch.Tensor, target: torch.Tensor, p: float = 1.0, q: float = 2.0
) -> torch.Tensor:
    """Norm-in-norm loss of predictions ``(N,)``/``(N, 1)`` against labels of the same length.

    Both vectors are centred and divided by their q-norm; the loss is the p-norm of their
    difference divided by ``2**max(1, 1/q) * N**max(0, 1/p - 1/q)`` and raised to the power p,
    so it lies in [0, 1] and does not change when ``pred`` is scaled by a positive factor or
    shifted. Needs ``N >= 2``.
    """
    pred = _as_column(pred, "pred")
    target = _as_column(target, "target").to(pred.dtype)
    n = pred.shape[0]
    if target.shape[0] != n:
        raise ValueError(f"pred has {n} entries but target has {target.shape[0]}")
    if n < 2:
        raise ValueError(f"norm-in-norm loss needs a batch of at least 2, got {n}")
    if p <= 0 or q <= 0:
        raise ValueError(f"p and q must be positive, got p={p}, q={q}")
    pred = pred - pred.mean()
    pred = pred / (EPS + torch.linalg.vector_norm(pred, ord=q))
    target = target - target.mean()
    target = target / (EPS + torch.linalg.vector_norm(target, ord=q))
    scale = 2 ** max(1.0, 1.0 / q) * n ** max(0.0, 1.0 / p - 1.0 / q)
    return (torch.linalg.vector_norm(pred - target, ord=p) / scale) ** p


def linearity_loss(
    outputs: Sequence[torch.Tensor],
    target: torch.Tensor,
    weights: Sequence[float] = LINEARITY_WEIGHTS,
    p: float = 1.0,
    q: float = 2.0,
) -> torch.Tensor:
    """Weighted norm-in-norm loss of ``[regr6, regr7, regression]`` (each ``(N, 1)``) vs MOS."""
    if len(outputs) != len(weights):
        raise ValueError(f"got {len(outputs)} outputs but {len(weights)} weights")
    return sum(
        w * norm_in_norm_loss(o, target, p, q) for o, w in zip(outputs, weights, strict=True)
    )


def ranking_hinge_loss(
    better: torch.Tensor, worse: torch.Tensor, spread: torch.Tensor | float, margin: float
) -> torch.Tensor:
    """Mean ``relu(margin - (better - worse) / spread)`` over pairs; inputs ``(N,)``/``(N, 1)``.

    ``spread`` (e.g. the detached standard deviation of the batch's scores) makes the margin
    independent of the arbitrary scale a norm-in-norm-trained regressor settles on.
    """
    better = _as_column(better, "better")
    worse = _as_column(worse, "worse")
    if better.shape != worse.shape:
        raise ValueError(f"better {tuple(better.shape)} and worse {tuple(worse.shape)} differ")
    if isinstance(spread, float) and not (spread > 0 and math.isfinite(spread)):
        raise ValueError(f"spread must be positive and finite, got {spread}")
    return torch.relu(margin - (better - worse) / (spread + EPS)).mean()


def score_consistency_loss(
    scores: torch.Tensor, reference: torch.Tensor, floor: float = 1.0
) -> torch.Tensor:
    """Mean relative score change ``|scores - reference| / max(|reference|, floor)``.

    The benchmark's Gain as a loss (without the x100): keeps a purified image's metric score
    at its clean reference's, the high-level guidance of Liao et al., "Defense against
    Adversarial Attacks Using High-Level Representation Guided Denoiser", CVPR 2018. Inputs
    ``(N,)``/``(N, 1)``; ``reference`` is treated as a constant; ``floor`` > 0 guards scores
    near zero.
    """
    scores = _as_column(scores, "scores")
    reference = _as_column(reference, "reference").detach().to(scores.dtype)
    if scores.shape != reference.shape:
        raise ValueError(f"scores has {scores.shape[0]} entries, reference {reference.shape[0]}")
    if not floor > 0:
        raise ValueError(f"floor must be positive, got {floor}")
    return ((scores - reference).abs() / reference.abs().clamp_min(floor)).mean()
