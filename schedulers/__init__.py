"""Which timesteps a purification chain runs, and configured diffusers schedulers for them."""

from schedulers.factory import SAMPLERS, make_scheduler
from schedulers.timestep_spacing import (
    NUM_TRAIN_TIMESTEPS,
    SPACINGS,
    ddim_grid_stride,
    ddim_kept_timesteps,
    ddim_t_stars,
    kept_timesteps,
    nearest_ddim_t_star,
)

__all__ = [
    "NUM_TRAIN_TIMESTEPS",
    "SAMPLERS",
    "SPACINGS",
    "ddim_grid_stride",
    "ddim_kept_timesteps",
    "kept_timesteps",
    "make_scheduler",
    "ddim_t_stars",
    "nearest_ddim_t_star",
]
