"""MobileNetV2 1.0 as a Linearity trunk: eight stages, ``features[6]`` at stride 16 and
``features[7]`` at stride 32, as ResNeXt's ``layer3``/``layer4`` are in
``metrics.linearity.IQAModel``.

The layers are those of the ImageNet-pretrained file in ``../shared/pretrained/
mobilenet_v2_imagenet`` (Sandler et al., CVPR 2018; TF-slim, batch norm folded into each
convolution, so every convolution has a bias and there is no normalisation layer). Padding is
TensorFlow's "SAME" (the odd pixel at the bottom/right), ReLU6 after every convolution but a
block's ``project``. The stem maps ImageNet-normalised input (what ``MetricModel`` feeds every
trunk) back to the ``(255 x - 128) / 128`` scaling the file was trained with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (expansion t, output channels c, repeats n, first stride s) per inverted-residual stage
INVERTED_RESIDUAL_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# Which of the 17 blocks each of features[1..7] holds; features[0] is the stem and features[7]
# ends with the 1x1 head. The stride-16 part is split so that features[6] ends at stride 16.
STAGE_BLOCKS = ((0,), (1, 2), (3, 4, 5), (6, 7), (8, 9), (10, 11, 12), (13, 14, 15, 16))


@dataclass(frozen=True)
class MobileNetV2Spec:
    """The MobileNetV2 1.0 trunk (no free shape parameters: it is the pretrained file's)."""

    kind: str = "mobilenet_v2"

    def __post_init__(self) -> None:
        if self.kind != "mobilenet_v2":
            raise ValueError(f"MobileNetV2Spec.kind must be 'mobilenet_v2', got {self.kind!r}")

    def stage_channels(self) -> list[int]:
        """Output channels of features[4..7] (the last two feed Linearity's heads)."""
        return [64, 64, 96, HEAD_CHANNELS]


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's "SAME" padding (extra pixel at the bottom/right).

    A stride-1 convolution with an odd kernel pads symmetrically, inside the convolution;
    only strided ones pad by hand, which depends on the input size."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, **kwargs) -> None:
        self.symmetric = stride == 1 and kernel % 2 == 1
        padding = kernel // 2 if self.symmetric else 0
        super().__init__(c_in, c_out, kernel, stride, padding=padding, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.symmetric:
            return super().forward(x)
        pads = []
        sizes = zip(x.shape[-2:][::-1], self.kernel_size[::-1], self.stride[::-1], strict=True)
        for size, k, s in sizes:
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return self._conv_forward(F.pad(x, pads), self.weight, self.bias)


class ConvReLU6(nn.Module):
    """A biased "SAME" convolution followed by ReLU6 (``relu=False``: no activation)."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, relu=True
    ) -> None:
        super().__init__()
        self.conv = SameConv2d(c_in, c_out, kernel, stride, groups=groups, bias=True)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return F.relu6(x) if self.relu else x


class InvertedResidual(nn.Module):
    """expand (1x1) -> depthwise (3x3, stride) -> project (1x1, linear), plus the input
    when stride is 1 and channels match. ``expansion`` 1 has no expand layer."""

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = c_in * expansion
        self.expand = ConvReLU6(c_in, hidden, 1) if expansion != 1 else None
        self.depthwise = ConvReLU6(hidden, hidden, 3, stride, groups=hidden)
        self.project = ConvReLU6(hidden, c_out, 1, relu=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.expand is None else self.expand(x)
        out = self.project(self.depthwise(out))
        return x + out if self.residual else out


class Stem(nn.Module):
    """ImageNet-normalised ``(B, 3, H, W)`` -> the file's ``(255 x - 128) / 128`` input -> 3x3
    stride-2 convolution to 32 channels, ReLU6."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)
        self.layer = ConvReLU6(3, STEM_CHANNELS, 3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x * self.std + self.mean  # [0, 1]
        return self.layer((255.0 * pixels - 128.0) / 128.0)


def _blocks() -> list[InvertedResidual]:
    blocks, c_in = [], STEM_CHANNELS
    for expansion, c_out, repeats, stride in INVERTED_RESIDUAL_SETTINGS:
        for i in range(repeats):
            blocks.append(InvertedResidual(c_in, c_out, stride if i == 0 else 1, expansion))
            c_in = c_out
    return blocks


def build_mobilenet_v2_trunk() -> nn.Sequential:
    """``Sequential(stem, stage1..stage7)``; stage 7 ends with the 320 -> 1280 head.
    Feed it channels-last input (``IQAModel`` does) for speed."""
    blocks = _blocks()
    stages: list[nn.Module] = [Stem()]
    for indices in STAGE_BLOCKS:
        stages.append(nn.Sequential(*(blocks[i] for i in indices)))
    stages[-1].append(ConvReLU6(320, HEAD_CHANNELS, 1))
    # channels-last weights: the depthwise convolutions run faster on the CPU
    return nn.Sequential(*stages).to(memory_format=torch.channels_last)


def pretrained_key_map() -> dict[str, str]:
    """Name in the pretrained file (``stem.weight``, ``blocks.3.expand.bias``, ``head.weight``)
    -> name in ``build_mobilenet_v2_trunk()``'s state dict; the classifier is not mapped."""
    names = {"stem": "0.layer.conv"}
    for stage, indices in enumerate(STAGE_BLOCKS, start=1):
        for position, block in enumerate(indices):
            parts = ("depthwise", "project") if block == 0 else ("expand", "depthwise", "project")
            for part in parts:
                names[f"blocks.{block}.{part}"] = f"{stage}.{position}.{part}.conv"
    names["head"] = f"{len(STAGE_BLOCKS)}.{len(STAGE_BLOCKS[-1])}.conv"
    return {f"{src}.{p}": f"{dst}.{p}" for src, dst in names.items() for p in ("weight", "bias")}


CLASSIFIER_KEYS = frozenset({"classifier.weight", "classifier.bias"})


def load_pretrained_trunk(trunk: nn.Sequential, path: str | Path) -> None:
    """Copy the pretrained MobileNetV2 file at ``path`` into ``trunk`` (strict: every trunk
    tensor, nothing but them and the classifier, same shapes); ``ValueError`` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"pretrained MobileNetV2 file not found: {path}")
    try:
        tensors = load_file(path)
    except SafetensorError as err:
        raise ValueError(f"{path} is not a safetensors file ({err})") from None
    key_map = pretrained_key_map()
    missing = sorted(set(key_map) - set(tensors))
    unexpected = sorted(set(tensors) - set(key_map) - CLASSIFIER_KEYS)
    if missing or unexpected:
        raise ValueError(
            f"{path} is not the MobileNetV2 1.0 file: missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}"
        )
    state = {key_map[k]: v for k, v in tensors.items() if k in key_map}
    try:
        trunk.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit the MobileNetV2 trunk: {err}") from err


def load_classifier(path: str | Path) -> nn.Conv2d:
    """The file's 1x1 ``classifier`` (1280 -> 1001 ImageNet logits, class 0 = background)."""
    tensors = load_file(Path(path))
    weight, bias = tensors["classifier.weight"], tensors["classifier.bias"]
    head = nn.Conv2d(weight.shape[1], weight.shape[0], 1)
    head.load_state_dict({"weight": weight, "bias": bias})
    return head
