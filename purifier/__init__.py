"""The user-facing purifier: knobs (``PurifierConfig``), the ``DiffusionPurifier`` that runs
them, weights discovery and tiled processing of large images."""

from purifier.config import PROVISIONAL_DEFAULTS, PurifierConfig, load_default_config
from purifier.diffusion_purifier import DiffusionPurifier
from purifier.tiling import tiled_apply
from purifier.weights import MissingWeightsError, newest_release, resolve_weights

__all__ = [
    "PROVISIONAL_DEFAULTS",
    "DiffusionPurifier",
    "MissingWeightsError",
    "PurifierConfig",
    "load_default_config",
    "newest_release",
    "resolve_weights",
    "tiled_apply",
]
