"""The benchmark's machinery, shared by ``scripts/benchmark.py`` and ``scripts/tune.py``.

Defenses are scored with the harness's own ``evaluate`` and ``aggregate``
(``evaluation.harness``, which ``test.py`` runs), on attacked images and on the clean
references. Run time is a ratio: seconds per image over one forward of Linearity
(ResNeXt-101 32x8d ``metrics.linearity.IQAModel()``, random init, eval, no_grad, batch 1)
on an image of the same size, measured in the same run.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any

import torch
from torch import nn

from common.devices import synchronize
from common.image_io import load_image
from defenses.registry import PurifyingDefense
from defenses.specs import defense_label
from diffusion.precision import has_native_bfloat16
from evaluation import harness
from evaluation.harness import ImagePair
from metrics.linearity import IQAModel

logger = logging.getLogger(__name__)

CLEAN = "clean"
TIME_RATIO = "Time ratio"
SCORE_SHIFT = "Score shift"
"""Mean signed score change in %, ``(f(def) - f(ref)) / f(ref) x 100`` (see ``score_shift``)."""

PairKey = tuple[str, str]
"""``(attack, attacked file name)``: identifies a pair and its record."""




# --- choosing images ----------------------------------------------------------------------


def spread(items: Sequence[Any], count: int | None) -> list[Any]:
    """``count`` evenly spaced items of ``items`` (first one included); all if ``count`` is
    None or not smaller than ``len(items)``."""
    if count is None or count >= len(items):
        return list(items)
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    return [items[i * len(items) // count] for i in range(count)]


def select_pairs(pairs: Sequence[Any], per_attack: int | None) -> list[Any]:
    """``per_attack`` evenly spaced pairs (by image name) of every attack, in input order."""
    by_attack: dict[str, list[Any]] = defaultdict(list)
    for pair in pairs:
        by_attack[pair.attack].append(pair)
    kept = {
        id(p)
        for group in by_attack.values()
        for p in spread(sorted(group, key=lambda p: p.attacked.name), per_attack)
    }
    return [p for p in pairs if id(p) in kept]


def clean_pairs(pairs: Sequence[Any]) -> list[Any]:
    """One ``(reference, reference)`` pair per distinct reference, attack named ``clean``."""
    references = sorted({p.reference for p in pairs})
    return [ImagePair(CLEAN, ref, ref) for ref in references]


def pair_key(pair: Any) -> PairKey:
    return (pair.attack, pair.attacked.name)


def image_hw(path: Path) -> tuple[int, int]:
    """``(height, width)`` of an image file, from its header."""
    width, height = harness.image_size(path)
    return height, width


def choose_grid_pairs(pairs: Sequence[Any], rows: int) -> list[Any]:
    """``rows`` pairs from different attacks (spread over attacks and image names)."""
    if rows < 1:
        return []
    by_attack: dict[str, list[Any]] = defaultdict(list)
    for pair in pairs:
        by_attack[pair.attack].append(pair)
    attacks = sorted(by_attack)
    chosen = []
    for i in range(min(rows, len(pairs))):
        group = sorted(by_attack[attacks[i * len(attacks) // rows % len(attacks)]], key=pair_key)
        candidates = [p for p in group if p not in chosen]
        if candidates:
            chosen.append(candidates[(i * len(candidates)) // rows % len(candidates)])
    return chosen


# --- timing -------------------------------------------------------------------------------


def linearity_seconds(
    sizes: Iterable[tuple[int, int]],
    model: nn.Module | None = None,
    repeats: int = 3,
    device: str | torch.device = "cpu",
) -> dict[tuple[int, int], float]:
    """Median seconds of one Linearity forward on a ``(1, 3, H, W)`` image, per ``(H, W)``.

    ``model`` defaults to ``IQAModel()`` (ResNeXt-101 32x8d, random init); one warm-up run per
    size precedes ``repeats`` timed ones under ``torch.no_grad()``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    device = torch.device(device)
    model = (IQAModel() if model is None else model).to(device).eval()
    seconds = {}
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for height, width in sorted(set(sizes)):
            image = torch.rand((1, 3, height, width), generator=generator).to(device)
            model(image)
            synchronize(device)  # the warm-up's queued work is not timed
            times = []
            for _ in range(repeats):
                start = perf_counter()
                model(image)
                synchronize(device)
                times.append(perf_counter() - start)
            seconds[(height, width)] = statistics.median(times)
            logger.info("Linearity forward %dx%d: %.3f s", height, width, seconds[(height, width)])
    return seconds


# --- running defenses ---------------------------------------------------------------------


class CapturingDefense:
    """Runs ``inner`` and keeps its outputs for chosen input images (for the comparison grid).

    ``targets`` maps a key to a ``(3, H, W)`` image; whenever an input equals one exactly, the
    matching output is stored (on the CPU) in ``captured[key]``.
    """

    def __init__(self, inner: PurifyingDefense, targets: Mapping[Any, torch.Tensor]) -> None:
        self.inner = inner
        self.targets = dict(targets)
        self.captured: dict[Any, torch.Tensor] = {}

    def __repr__(self) -> str:
        return repr(self.inner)

    def apply_defense(self, images: torch.Tensor) -> torch.Tensor:
        out = self.inner.apply_defense(images)
        for key, target in self.targets.items():
            if target.shape != images.shape[1:]:
                continue
            for i in range(images.shape[0]):
                if torch.equal(target, images[i].detach().to("cpu", target.dtype)):
                    self.captured[key] = out[i].detach().to("cpu").clone()
        return out


@dataclass
class DefenseRun:
    """Every record of one defense on attacked images and on the clean references.

    ``ratios[i]`` is ``records[i].seconds`` over one Linearity forward on that image's size.
    """

    name: str
    label: str
    description: str
    records: list[Any]
    ratios: list[float]
    clean_records: list[Any]
    clean_ratios: list[float]
    subset: int | None = None
    captured: dict[PairKey, torch.Tensor] = field(default_factory=dict, repr=False)

    def pair_keys(self) -> set[PairKey]:
        return {(r.attack, r.name) for r in self.records}

    def rows(self) -> list[dict[str, Any]]:
        """``test.aggregate`` rows (attacks, then ``All Attacks``) plus ``TIME_RATIO``."""
        return summarize(self.records, self.ratios)

    def total(self) -> dict[str, Any]:
        return self.rows()[-1]

    def clean_row(self) -> dict[str, Any]:
        """Figures on the clean references (``Gain Score`` is the clean-input gain)."""
        return summarize(self.clean_records, self.clean_ratios)[-1]

    def record(self, key: PairKey) -> Any:
        return next(r for r in self.records if (r.attack, r.name) == key)

    def restricted(self, keys: set[PairKey]) -> DefenseRun:
        """The same run limited to the records in ``keys`` (and their references)."""
        kept = [
            (r, t)
            for r, t in zip(self.records, self.ratios, strict=True)
            if (r.attack, r.name) in keys
        ]
        names = {name for _, name in keys}
        clean = [
            (r, t)
            for r, t in zip(self.clean_records, self.clean_ratios, strict=True)
            if r.name in names
        ]
        return dataclasses.replace(
            self,
            records=[r for r, _ in kept],
            ratios=[t for _, t in kept],
            clean_records=[r for r, _ in clean],
            clean_ratios=[t for _, t in clean],
        )


def score_shift(records: Sequence[Any]) -> float:
    """Mean signed score change ``(f(def) - f(ref)) / f(ref) x 100`` (NaN-skipping): the
    Gain without its absolute value. A purifier that smooths shows a negative shift on clean
    inputs; attack left in place shows a positive one on attacked inputs. Their difference is
    the uplift that survives purification, which the Gain alone can hide when the two cancel."""
    return harness.nan_mean(
        [(r.defense_score - r.source_score) / r.source_score * 100 for r in records]
    )


def summarize(records: Sequence[Any], ratios: Sequence[float]) -> list[dict[str, Any]]:
    """``test.aggregate(records)`` with ``TIME_RATIO`` and ``SCORE_SHIFT`` columns
    (NaN-skipping means)."""
    rows = harness.aggregate(records)
    by_attack: dict[str, list[tuple[Any, float]]] = defaultdict(list)
    for record, ratio in zip(records, ratios, strict=True):
        by_attack[record.attack].append((record, ratio))
    for row in rows:
        if row["Attack"] == harness.ALL_ATTACKS:
            chosen = list(zip(records, ratios, strict=True))
        else:
            chosen = by_attack[row["Attack"]]
        row[TIME_RATIO] = harness.nan_mean([ratio for _, ratio in chosen])
        row[SCORE_SHIFT] = score_shift([record for record, _ in chosen])
    return rows


def time_ratios(
    records: Sequence[Any], pairs: Sequence[Any], linearity: Mapping[tuple[int, int], float]
) -> list[float]:
    """Per record: seconds per image over one Linearity forward on the attacked image's size."""
    ratios = []
    for record, pair in zip(records, pairs, strict=True):
        size = image_hw(pair.attacked)
        if size not in linearity:
            raise ValueError(f"no Linearity timing for {size[0]}x{size[1]} ({pair.attacked})")
        ratios.append(record.seconds / linearity[size])
    return ratios


def run_defense(
    name: str,
    defense: PurifyingDefense,
    pairs: Sequence[Any],
    metric: Callable[[torch.Tensor], torch.Tensor],
    linearity: Mapping[tuple[int, int], float],
    *,
    subset: int | None = None,
    grid_targets: Mapping[PairKey, torch.Tensor] | None = None,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    progress: bool = True,
) -> DefenseRun:
    """Score ``defense`` with ``test.evaluate`` on ``pairs`` and on their clean references."""
    wrapped = CapturingDefense(defense, grid_targets or {})
    logger.info("%s on %d attacked images: %r", name, len(pairs), defense)
    records = harness.evaluate(pairs, wrapped, metric, batch_size, device, num_workers, progress)
    cleans = clean_pairs(pairs)
    clean_records = harness.evaluate(
        cleans, defense, metric, batch_size, device, num_workers, progress
    )
    return DefenseRun(
        name=name,
        label=defense_label(name),
        description=repr(defense),
        records=records,
        ratios=time_ratios(records, pairs, linearity),
        clean_records=clean_records,
        clean_ratios=time_ratios(clean_records, cleans, linearity),
        subset=subset,
        captured=wrapped.captured,
    )


def run_benchmark(
    pairs: Sequence[Any],
    defenses: Mapping[str, PurifyingDefense],
    metric: Callable[[torch.Tensor], torch.Tensor],
    linearity: Mapping[tuple[int, int], float],
    *,
    subsets: Mapping[str, int] | None = None,
    grid_pairs: Sequence[Any] = (),
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, DefenseRun]:
    """Run every defense (in order) on ``pairs`` (or its ``subsets[name]`` per attack)."""
    subsets = dict(subsets or {})
    unknown = sorted(set(subsets) - set(defenses))
    if unknown:
        raise ValueError(f"--subset-for names defenses that are not run: {unknown}")
    targets = {pair_key(p): load_image(p.attacked) for p in grid_pairs}
    runs = {}
    for name, defense in defenses.items():
        subset = subsets.get(name)
        chosen = select_pairs(pairs, subset) if subset is not None else list(pairs)
        keys = {pair_key(p) for p in chosen}
        runs[name] = run_defense(
            name,
            defense,
            chosen,
            metric,
            linearity,
            subset=subset,
            grid_targets={k: v for k, v in targets.items() if k in keys},
            batch_size=batch_size,
            device=device,
            num_workers=num_workers,
            progress=progress,
        )
    return runs


# --- small helpers --------------------------------------------------------------------------


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """The machine a run measured on; ``native_bfloat16`` is that of ``device`` (what
    ``precision="auto"`` chose there)."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "native_bfloat16": has_native_bfloat16(torch.device(device)),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def json_ready(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
