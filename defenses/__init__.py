"""Defenses of the Linearity metric, selectable by name (see ``defenses.registry``)."""

from defenses.chain import ChainedDefense
from defenses.registry import DEFAULT_DEFENSE, DEFENSES, make_defense, register_defense

__all__ = ["DEFAULT_DEFENSE", "DEFENSES", "ChainedDefense", "make_defense", "register_defense"]
