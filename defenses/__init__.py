"""Defenses of the Linearity metric, selectable by name: ``defenses.registry`` holds the one
list (factory, label, kind), ``defenses.specs`` the benchmark's spec syntax
(``ddpm@WEIGHTS:knob=value``, chains ``a+b``), ``defenses.classical`` the image-processing
baselines."""

from defenses.chain import ChainedDefense
from defenses.registry import DEFAULT_DEFENSE, DEFENSES, make_defense, register_defense

__all__ = ["DEFAULT_DEFENSE", "DEFENSES", "ChainedDefense", "make_defense", "register_defense"]
