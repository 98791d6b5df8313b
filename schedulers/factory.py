"""Fresh, configured diffusers schedulers for a purification chain, with the steps they keep.

All step arithmetic stays in diffusers; this module only picks the timesteps:

* ``"ddpm"``: ancestral sampling (``DDPMScheduler``) on any descending list from
  ``kept_timesteps`` (spacing ``"uniform"`` or ``"quadratic"``).
* ``"ddim"``: deterministic DDIM (``eta = 0``). ``DDIMScheduler`` only runs evenly spaced
  "trailing" grids, so the grid of stride ``r = (t_star + 1) / steps`` is built and its tail
  below ``t_star`` is kept; ``r`` must divide 1000. Pass ``snap_to_grid=True`` to move
  ``t_star`` to the nearest valid value instead of raising ``ValueError``.

Schedulers are stateful: every call returns a new instance.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from diffusion.noise import ddpm_scheduler_config
from schedulers.timestep_spacing import (
    ddim_grid_stride,
    ddim_kept_timesteps,
    kept_timesteps,
    nearest_ddim_t_star,
)

SAMPLERS = ("ddpm", "ddim")


def make_scheduler(
    sampler: str,
    t_star: int,
    steps: int,
    spacing: str = "uniform",
    scheduler_config: Mapping[str, Any] | None = None,
    snap_to_grid: bool = False,
) -> tuple[SchedulerMixin, list[int]]:
    """``(configured scheduler, descending kept timesteps)`` for a chain starting at ``t_star``.

    ``scheduler_config`` is the training schedule (e.g. from ``diffusion.load_denoiser``);
    default: the project's linear-beta schedule.
    """
    config = dict(scheduler_config or ddpm_scheduler_config())
    if sampler == "ddpm":
        kept = kept_timesteps(t_star, steps, spacing, config["num_train_timesteps"])
        scheduler = DDPMScheduler.from_config(config)
        scheduler.set_timesteps(timesteps=kept)
        return scheduler, kept
    if sampler == "ddim":
        if spacing != "uniform":
            raise ValueError(
                f"DDIM needs an evenly spaced grid: spacing must be 'uniform', not {spacing!r}"
            )
        total = config["num_train_timesteps"]
        if snap_to_grid:
            t_star = nearest_ddim_t_star(t_star, steps, total)
        kept = ddim_kept_timesteps(t_star, steps, total)
        scheduler = DDIMScheduler.from_config(
            config, timestep_spacing="trailing", set_alpha_to_one=True, steps_offset=0
        )
        scheduler.set_timesteps(total // ddim_grid_stride(t_star, steps, total))
        grid = [int(t) for t in scheduler.timesteps]
        if grid[len(grid) - steps :] != kept:
            raise RuntimeError(f"DDIM grid {grid[-steps:]} does not end with {kept}")
        return scheduler, kept
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
