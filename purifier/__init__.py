"""The user-facing purifier: knobs (``PurifierConfig``), the ``DiffusionPurifier`` that runs
them, the perturbation detector that gates it, weights discovery and tiled processing of
large images; its command-line knobs (``options``), the ``purify`` command (``cli``) and the
competition bundle's exporter (``submission``)."""

from purifier.config import (
    PROVISIONAL_DEFAULTS,
    PurifierConfig,
    check_config,
    load_default_config,
)
from purifier.diffusion_purifier import DiffusionPurifier
from purifier.perturbation_detector import (
    MissingDetectorError,
    PerturbationDetector,
    load_detector,
    newest_detector,
    resolve_detector,
)
from purifier.tiling import tiled_apply
from purifier.weights import MissingWeightsError, newest_release, resolve_weights

__all__ = [
    "PROVISIONAL_DEFAULTS",
    "DiffusionPurifier",
    "MissingDetectorError",
    "MissingWeightsError",
    "PerturbationDetector",
    "PurifierConfig",
    "check_config",
    "load_default_config",
    "load_detector",
    "newest_detector",
    "newest_release",
    "resolve_detector",
    "resolve_weights",
    "tiled_apply",
]
