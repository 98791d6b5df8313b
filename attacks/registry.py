"""Attacks by name: ``ATTACKS`` and ``make_attack(name, metric, **overrides)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from attacks.base import Attack
from attacks.color_filter import AdvCF
from attacks.fgsm import AMIFGSM, FGSM, IFGSM, MIFGSM
from attacks.korhonen import Korhonen
from attacks.madc import MADC
from attacks.ssah import SSAH
from attacks.uap import UAP
from attacks.zhang import ZhangSSIM

ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls
    for cls in (FGSM, IFGSM, MIFGSM, AMIFGSM, MADC, Korhonen, ZhangSSIM, AdvCF, SSAH, UAP)
}


def make_attack(
    name: str, metric: Callable[[torch.Tensor], torch.Tensor], **overrides: Any
) -> Attack:
    """Build the attack registered as ``name`` with its defaults, changed by ``overrides``."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")
    try:
        return ATTACKS[name](metric, **overrides)
    except TypeError as err:
        raise ValueError(f"bad options for attack {name!r}: {err}") from err
