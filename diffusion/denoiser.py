"""The noise-prediction network: a diffusers ``UNet2DModel`` behind a pixel-unshuffle front end.

Space-to-depth first (as FFDNet: Zhang, Zuo and Zhang, "FFDNet: Toward a Fast and Flexible
Solution for CNN-Based Image Denoising", IEEE TIP 2018), so the UNet runs at 1/r resolution
with ``3 r^2`` channels; no attention anywhere, so the network is fully convolutional and
accepts any ``H x W`` (it pads internally and crops back).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ModelMixin, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config

IMAGE_CHANNELS = 3


class PixelUnshuffleUNet(ModelMixin, ConfigMixin):
    """Predict the noise ``eps`` of ``x_t``: ``(B, 3, H, W)`` in [-1, 1] -> ``(B, 3, H, W)``.

    ``unshuffle`` is the space-to-depth factor ``r``; ``block_out_channels`` has one entry per
    UNet level (each level after the first halves the resolution), ``layers_per_block`` resnets
    per level, ``norm_num_groups`` groups in every GroupNorm.
    """

    @register_to_config
    def __init__(
        self,
        unshuffle: int = 4,
        block_out_channels: tuple[int, ...] = (64, 128, 192),
        layers_per_block: int = 1,
        norm_num_groups: int = 8,
    ) -> None:
        super().__init__()
        if unshuffle < 1:
            raise ValueError(f"unshuffle must be >= 1, got {unshuffle}")
        if len(block_out_channels) < 1:
            raise ValueError("block_out_channels needs at least one level")
        levels = len(block_out_channels)
        channels = IMAGE_CHANNELS * unshuffle**2
        self.unet = UNet2DModel(
            in_channels=channels,
            out_channels=channels,
            block_out_channels=tuple(block_out_channels),
            down_block_types=("DownBlock2D",) * levels,
            up_block_types=("UpBlock2D",) * levels,
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            add_attention=False,
        )

    @property
    def size_multiple(self) -> int:
        """Height and width are padded internally to a multiple of this."""
        return self.config.unshuffle * 2 ** (len(self.config.block_out_channels) - 1)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int) -> torch.Tensor:
        """``sample`` ``(B, 3, H, W)`` in [-1, 1] at diffusion step ``timestep`` (int or ``(B,)``)
        -> predicted noise ``(B, 3, H, W)``."""
        if sample.dim() != 4 or sample.shape[1] != IMAGE_CHANNELS:
            raise ValueError(f"expected (B, 3, H, W), got shape {tuple(sample.shape)}")
        height, width = sample.shape[-2:]
        padded = _pad_to_multiple(sample, self.size_multiple)
        r = self.config.unshuffle
        features = F.pixel_unshuffle(padded, r)
        if torch.is_autocast_enabled(features.device.type):
            # oneDNN's (and cuDNN's) fast low-precision convolutions want channels-last; in
            # NCHW, 40 % of a bfloat16 forward went to layout copies. float32 stays NCHW.
            features = features.contiguous(memory_format=torch.channels_last)
        eps = self.unet(features, timestep).sample
        return F.pixel_shuffle(eps, r)[..., :height, :width]


def _pad_to_multiple(images: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad bottom/right of ``(B, C, H, W)`` up to a multiple: reflect, or replicate when the
    image is too small to reflect."""
    height, width = images.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h == 0 and pad_w == 0:
        return images
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(images, (0, pad_w, 0, pad_h), mode=mode)
