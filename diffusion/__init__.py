"""The diffusion core: noise-prediction network, noise schedule, training loss, purification.

Images are [0, 1] at every public function here except the network and the loss, which work
in the diffusion range [-1, 1].
"""

from diffusion.denoiser import PixelUnshuffleUNet
from diffusion.loading import load_denoiser
from diffusion.noise import (
    ddpm_scheduler_config,
    sigma_to_timestep,
    timestep_to_sigma,
    training_scheduler,
)
from diffusion.purification import denoise_one_shot, make_generator, purify
from diffusion.training_loss import TimestepSampler, epsilon_mse_loss

__all__ = [
    "PixelUnshuffleUNet",
    "TimestepSampler",
    "ddpm_scheduler_config",
    "denoise_one_shot",
    "epsilon_mse_loss",
    "load_denoiser",
    "make_generator",
    "purify",
    "sigma_to_timestep",
    "timestep_to_sigma",
    "training_scheduler",
]
