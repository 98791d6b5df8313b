"""Adversarial attacks on differentiable quality metrics (images float NCHW in [0, 1]), and
attacked-dataset generation (``attacks.dataset``, run by ``scripts/make_dataset.py``).

``make_attack(name, metric, **overrides)`` builds one by name; ``ATTACKS`` lists them.
"""

from attacks.base import Attack
from attacks.color_filter import AdvCF
from attacks.fgsm import AMIFGSM, FGSM, IFGSM, MIFGSM
from attacks.korhonen import Korhonen
from attacks.madc import MADC
from attacks.registry import ATTACKS, make_attack
from attacks.ssah import SSAH
from attacks.uap import UAP
from attacks.zhang import ZhangSSIM

__all__ = [
    "ATTACKS",
    "AMIFGSM",
    "FGSM",
    "IFGSM",
    "MADC",
    "MIFGSM",
    "SSAH",
    "UAP",
    "AdvCF",
    "Attack",
    "Korhonen",
    "ZhangSSIM",
    "make_attack",
]
