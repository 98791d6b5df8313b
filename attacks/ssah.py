"""SSAH adapted to quality metrics: a feature-space attack with a low-frequency constraint.

Luo, Wu, Liu, Zhang and Wang, "Frequency-driven Imperceptible Adversarial Attack on
Semantic Similarity", CVPR 2022. SSAH optimises in ``tanh`` space with Adam, pushes the
deep features of the adversarial image away from the clean ones (cosine similarity with a
margin) and penalises change of the Haar low-frequency band, where changes are visible.

For a quality metric the goal is a higher score, so our objective per image is::

    score / metric_range
    - feature_weight * relu(cos(f(x), f(x0)) - margin)          # SSAH's feature term
    - lf_weight * smooth_l1(LL(x), LL(x0), beta=1/255)           # SSAH's frequency term

``f`` is the metric's deep features: for ``model.MetricModel`` (or anything with a
``.model.pooled_features`` and ImageNet ``mean``/``std`` buffers) the concatenated pooled
features of trunk stages 3 and 4; other metrics may pass ``feature_fn``, or get no
feature term. The smooth-L1 is a per-image mean, so weights do not depend on image size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from einops import reduce

from attacks.base import Attack, check_number, set_grads
from attacks.haar import low_frequency

logger = logging.getLogger(__name__)

FeatureFn = Callable[[torch.Tensor], torch.Tensor]
"""``(B, 3, H, W)`` in [0, 1] -> ``(B, D)`` features."""


def metric_features(metric: object) -> FeatureFn | None:
    """Pooled trunk features of a ``MetricModel``-like metric, or None if it has none."""
    inner = getattr(metric, "model", None)
    mean, std = getattr(metric, "mean", None), getattr(metric, "std", None)
    has_features = callable(getattr(inner, "pooled_features", None))
    if not has_features or mean is None or std is None:
        return None

    def features(x: torch.Tensor) -> torch.Tensor:
        f6, f7 = inner.pooled_features((x.to(mean.dtype) - mean) / std)
        return torch.cat((f6, f7), dim=1)

    return features


class SSAH(Attack):
    """Adam in ``tanh`` space on the objective above (``alpha`` is the learning rate).

    Defaults (our choice; the MSU benchmark does not fix them for IQA): 10 iterations,
    ``alpha = 0.01`` (at most ~0.005 per pixel per step), ``margin = 0.2`` (SSAH's ``m``),
    ``feature_weight = 1.0``, ``lf_weight = 10.0`` (at 10 the low-frequency RMSE of the
    perturbation is about a third of I-FGSM's for ~80% of its gain, on a test metric).
    Clean features are taken from the clean image as the metric sees it (no EOT transform
    or defense); adversarial features from each EOT view. No L-inf promise (``bound = None``).
    """

    name = "ssah"
    bound = None

    def __init__(
        self,
        metric: Callable,
        *,
        eps: float = 0.0,
        steps: int = 10,
        alpha: float = 0.01,
        margin: float = 0.2,
        feature_weight: float = 1.0,
        lf_weight: float = 10.0,
        feature_fn: FeatureFn | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(metric, eps=eps, steps=steps, alpha=alpha, **kwargs)
        check_number("margin", margin, minimum=-1.0)
        check_number("feature_weight", feature_weight, minimum=0.0)
        check_number("lf_weight", lf_weight, minimum=0.0)
        if feature_fn is not None and not callable(feature_fn):
            raise ValueError("feature_fn must be callable images -> (B, D) features, or None")
        self.margin = float(margin)
        self.feature_weight = float(feature_weight)
        self.lf_weight = float(lf_weight)
        self.feature_fn = feature_fn if feature_fn is not None else metric_features(metric)
        if self.feature_fn is None and self.feature_weight > 0:
            logger.info("ssah: metric exposes no features; using the score term only")

    def extra_hyperparameters(self) -> dict[str, Any]:
        return {
            "margin": self.margin,
            "feature_weight": self.feature_weight,
            "lf_weight": self.lf_weight,
            "features": self.feature_fn is not None,
        }

    def attack(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        use_features = self.feature_fn is not None and self.feature_weight > 0
        clean_features = None
        if use_features:
            with torch.no_grad():
                clean_features = self.feature_fn(images)

        def objective(view: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
            value = score / self.metric_range
            if clean_features is not None:
                sim = F.cosine_similarity(self.feature_fn(view), clean_features, dim=1)
                value = value - self.feature_weight * (sim - self.margin).clamp_min(0.0)
            return value

        clean_low = low_frequency(images)
        tiny = 1e-6  # keeps atanh finite at 0 and 1
        w = torch.atanh((images * 2 - 1).clamp(-1 + tiny, 1 - tiny)).requires_grad_(True)
        optimizer = torch.optim.Adam([w], lr=self.alpha)
        for _ in range(self.steps):
            x = (torch.tanh(w) + 1) / 2
            grad, _ = self.objective_grad(x, generator, objective)
            lf = F.smooth_l1_loss(low_frequency(x), clean_low, reduction="none", beta=1 / 255)
            penalty = self.lf_weight * reduce(lf, "b c h w -> b", "mean").sum()
            set_grads([w], [penalty, x], [None, -grad])
            optimizer.step()
        x = (torch.tanh(w.detach()) + 1) / 2
        return x
