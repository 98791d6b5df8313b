"""The Linearity no-reference image-quality metric (LinearityIQA), without torchvision.

Li, Jiang and Jiang, "Norm-in-Norm Loss with Faster Convergence and Better Performance
for Image Quality Assessment", ACM MM 2020. The trunk is torchvision's ResNeXt-101 32x8d
rebuilt here module for module, so a real ``p1q2.pth`` loads with ``strict=True``.

The network and its checkpoint loading; ``model.MetricModel`` wraps it as the competition's
interface.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from metrics.mobilenet_v2 import MobileNetV2Spec, build_mobilenet_v2_trunk

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "p1q2.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TrunkSpec:
    """Shape of a ResNeXt trunk: blocks per stage, stem width, groups and width per group."""

    blocks: tuple[int, int, int, int]
    groups: int = 32
    width_per_group: int = 8
    stem_width: int = 64
    expansion: int = 4

    def __post_init__(self) -> None:
        if len(self.blocks) != 4 or min(self.blocks) < 1:
            raise ValueError(f"blocks must be four integers >= 1, got {self.blocks}")
        if min(self.groups, self.width_per_group, self.stem_width, self.expansion) < 1:
            raise ValueError(f"trunk sizes must be >= 1, got {self}")
        # the first stage's bottleneck is stem_width * width_per_group / 64 channels per group
        if self.stem_width * self.width_per_group < 64:
            raise ValueError(
                f"stem_width x width_per_group must be >= 64 (the first stage would have no "
                f"channels), got {self.stem_width} x {self.width_per_group}"
            )

    def stage_channels(self) -> list[int]:
        """Output channels of the four stages (features[4..7])."""
        return [self.stem_width * 2**i * self.expansion for i in range(4)]


RESNEXT101_32X8D = TrunkSpec(blocks=(3, 4, 23, 3))
AnyTrunkSpec = TrunkSpec | MobileNetV2Spec


class Bottleneck(nn.Module):
    """torchvision's ResNeXt bottleneck (stride on the 3x3 conv), same parameter names."""

    def __init__(
        self, in_ch: int, planes: int, stride: int, groups: int, base_width: int, expansion: int
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        out_ch = planes * expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def build_trunk(spec: AnyTrunkSpec) -> nn.Sequential:
    """``Sequential(conv1, bn1, relu, maxpool, layer1..layer4)`` for a ResNeXt ``spec``; the
    eight stages of ``metrics.mobilenet_v2`` for a ``MobileNetV2Spec``. Either way
    ``features[6]`` ends at stride 16 and ``features[7]`` at stride 32."""
    if isinstance(spec, MobileNetV2Spec):
        return build_mobilenet_v2_trunk()
    if not isinstance(spec, TrunkSpec):
        raise ValueError(f"spec must be a TrunkSpec or MobileNetV2Spec, got {spec!r}")
    stem = spec.stem_width
    modules: list[nn.Module] = [
        nn.Conv2d(3, stem, 7, 2, 3, bias=False),
        nn.BatchNorm2d(stem),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
    ]
    in_ch = stem
    for stage, n_blocks in enumerate(spec.blocks):
        planes = stem * 2**stage
        blocks = []
        for i in range(n_blocks):
            stride = 2 if (stage > 0 and i == 0) else 1
            blocks.append(
                Bottleneck(in_ch, planes, stride, spec.groups, spec.width_per_group, spec.expansion)
            )
            in_ch = planes * spec.expansion
        modules.append(nn.Sequential(*blocks))
    trunk = nn.Sequential(*modules)
    for m in trunk.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return trunk


def _reduction_head(in_features: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, 1024),
        nn.BatchNorm1d(1024),
        nn.Linear(1024, 256),
        nn.BatchNorm1d(256),
        nn.Linear(256, 64),
        nn.BatchNorm1d(64),
        nn.ReLU(),
    )


class IQAModel(nn.Module):
    """Linearity: a ResNeXt trunk, average-pooled features of stages 3 and 4, three regressors.
    A ``MobileNetV2Spec`` puts the pretrained MobileNetV2 trunk under the same heads.

    Input: ImageNet-normalised float ``(B, 3, H, W)``. Output: ``[regr6, regr7, regression]``,
    each ``(B, 1)``; the competition score uses the last one.
    """

    def __init__(self, spec: AnyTrunkSpec = RESNEXT101_32X8D) -> None:
        super().__init__()
        self.spec = spec
        self.features = build_trunk(spec)
        c6, c7 = spec.stage_channels()[2:]
        self.dr6 = _reduction_head(c6)
        self.dr7 = _reduction_head(c7)
        self.regr6 = nn.Linear(64, 1)
        self.regr7 = nn.Linear(64, 1)
        self.regression = nn.Linear(64 * 2, 1)

    def pooled_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Average-pooled ``features[6]`` and ``features[7]`` outputs: ``(B, C6)``, ``(B, C7)``."""
        for i, module in enumerate(self.features):
            x = module(x)
            if i == 6:
                f6 = x.mean(dim=(2, 3))
        return f6, x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if isinstance(self.spec, MobileNetV2Spec):
            # depthwise convolutions run ~15 % faster on the CPU in channels-last order
            x = x.contiguous(memory_format=torch.channels_last)
        f6, f7 = self.pooled_features(x)
        h6, h7 = self.dr6(f6), self.dr7(f7)
        return [self.regr6(h6), self.regr7(h7), self.regression(torch.cat((h6, h7), dim=1))]


class CheckpointError(ValueError):
    """A metric checkpoint is missing, unreadable or does not match the model."""


def _read_checkpoint(path: Path, device: torch.device | str) -> dict:
    if not path.is_file():
        raise CheckpointError(f"metric checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):
            raise CheckpointError(f"cannot read metric checkpoint {path}: corrupt file") from err
        raise CheckpointError(
            f"{path} holds pickled Python objects that weights_only=True refuses to load. "
            f"If you trust the file, convert it once with "
            f"`python scripts/convert_checkpoint.py {path} OUT.pth --trust`, which re-saves it "
            "as plain tensors and floats, and load OUT.pth."
        ) from err
    except Exception as err:  # torch raises many types for a damaged zip/pickle stream
        raise CheckpointError(
            f"cannot read metric checkpoint {path} (corrupt, or not a torch checkpoint): {err}"
        ) from err
    if not isinstance(ckpt, dict) or not {"model", "k", "b"} <= set(ckpt):
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} must hold a dict with 'model', 'k' and 'b'; found {keys}")
    return ckpt


def _as_float_list(value: object, what: str, path: Path) -> list[float]:
    try:
        values = [float(v) for v in value]  # type: ignore[union-attr]
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: '{what}' must be a list of numbers, got {value!r}") from err
    if not values:
        raise CheckpointError(f"{path}: '{what}' is empty")
    return values


def load_iqa_model(
    path: Path, device: torch.device | str, spec: TrunkSpec = RESNEXT101_32X8D
) -> tuple[IQAModel, list[float], list[float]]:
    """Load a ``{'model', 'k', 'b'}`` checkpoint into an ``IQAModel`` with ``strict=True``."""
    ckpt = _read_checkpoint(path, device)
    model = IQAModel(spec)
    state = ckpt["model"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: 'model' must be a state dict, got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match IQAModel: {len(missing)} missing keys {missing[:8]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:8]}"
        )
    bad = [k for k, v in state.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if bad:
        k = bad[0]
        raise CheckpointError(
            f"{path}: {len(bad)} tensors have the wrong shape, e.g. {k}: "
            f"{tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        )
    model.load_state_dict(state, strict=True)
    k = _as_float_list(ckpt["k"], "k", path)
    b = _as_float_list(ckpt["b"], "b", path)
    return model, k, b
