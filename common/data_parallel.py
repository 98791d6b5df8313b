"""Data-parallel runs: split a sorted list of files between the processes of a launch, then
add up what each process did.

A script that processes files one by one runs unchanged under a launcher that starts N
copies of it (``accelerate launch --multi_gpu --num_processes N``, ``torchrun
--nproc_per_node N``): every copy builds the same sorted plan, keeps its own shard
(``take_shard``), and at the end ``gather_objects`` hands every process the results of all.
Started without a launcher there is one process, its shard is everything, and nothing
changes. The process group is accelerate's ``PartialState``: gloo on CPU, NCCL on GPUs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch
from accelerate import PartialState
from accelerate.utils import gather_object

T = TypeVar("T")


def assign_shards(costs: Sequence[float], count: int) -> list[int]:
    """The shard (``0 .. count-1``) of each item, balancing the summed ``costs`` per shard.

    Greedy longest-first: items from the most to the least costly (ties: earlier item first)
    each go to the least loaded shard (ties: lowest index). Deterministic; equal costs give
    round robin (item ``i`` -> shard ``i % count``). ``ValueError`` if ``count < 1`` or a
    cost is negative or not finite.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be an integer >= 1, got {count!r}")
    values = [float(c) for c in costs]
    bad = [c for c in values if not (c >= 0 and c < float("inf"))]
    if bad:
        raise ValueError(f"costs must be finite and >= 0, got {bad[0]!r}")
    loads = [0.0] * count
    shards = [0] * len(values)
    for item in sorted(range(len(values)), key=lambda i: (-values[i], i)):
        shard = min(range(count), key=lambda s: (loads[s], s))
        shards[item] = shard
        loads[shard] += values[item]
    return shards


def take_shard(
    items: Sequence[T], index: int, count: int, costs: Sequence[float] | None = None
) -> list[T]:
    """Items of shard ``index`` of ``count`` (see ``assign_shards``; ``costs=None``: all equal),
    in their original order. The ``count`` shards are disjoint and together hold every item.
    ``ValueError`` on a bad ``index``/``count`` or a ``costs`` of another length."""
    costs = [1.0] * len(items) if costs is None else costs
    if len(costs) != len(items):
        raise ValueError(f"{len(costs)} costs for {len(items)} items")
    shards = assign_shards(costs, count)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise ValueError(f"index must be an integer in [0, {count}), got {index!r}")
    return [item for item, shard in zip(items, shards, strict=True) if shard == index]


def launched_without_gpus() -> bool:
    """True when a launcher started several processes (``WORLD_SIZE`` > 1) and there is no
    CUDA device: they must then join a CPU (gloo) group, which accelerate only forms when
    told ``cpu=True``."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


@contextmanager
def process_group(device: str | torch.device = "cpu") -> Iterator[PartialState]:
    """Accelerate's ``PartialState`` for a run on ``device``; the process group is destroyed on
    exit (a gloo group left alive aborts the interpreter at shutdown).

    A CPU ``device`` (or a launch on a machine without GPUs) makes the launched processes one
    gloo group; otherwise accelerate picks the accelerator backend and ``state.device`` is
    this process's GPU (see ``process_device``). Without a launcher: one process, no group.
    """
    cpu = torch.device(device).type == "cpu" or launched_without_gpus()
    state = PartialState(cpu=cpu)
    try:
        yield state
    finally:
        state.destroy_process_group()


def process_device(state: PartialState, requested: str | torch.device) -> torch.device:
    """The device this process computes on: ``state.device`` (e.g. ``cuda:3`` for process 3)
    when several processes share ``requested``'s accelerator type and no index was given,
    else ``requested`` unchanged (CPU processes all use ``cpu``)."""
    wanted = torch.device(requested)
    if (
        state.num_processes > 1
        and wanted.type not in ("cpu", "meta")
        and wanted.index is None
        and wanted.type == state.device.type
    ):
        return state.device
    return wanted


def gather_objects(state: PartialState, obj: T) -> list[T]:
    """``obj`` of every process, in process order, on every process (``[obj]`` when alone).
    Waits until every process gets here, so nothing is summarised before all are done.
    ``obj`` must be picklable."""
    state.wait_for_everyone()
    return list(gather_object([obj]))
