"""The ImageNet-pretrained MobileNetV2 trunk under Linearity's heads (stand-in v2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from common import paths
from common.image_io import load_image
from metrics.linearity import IMAGENET_MEAN, IMAGENET_STD, IQAModel
from metrics.mobilenet_v2 import (
    MobileNetV2Spec,
    SameConv2d,
    build_mobilenet_v2_trunk,
    load_classifier,
    load_pretrained_trunk,
    pretrained_key_map,
)
from metrics.standin import load_standin, save_standin, spec_from_dict, spec_to_dict
from model import MetricModel

PRETRAINED_DIR = paths.ROOT.parent / "shared" / "pretrained" / "mobilenet_v2_imagenet"
PRETRAINED_FILE = PRETRAINED_DIR / "mobilenet_v2_imagenet.safetensors"
needs_pretrained = pytest.mark.skipif(
    not PRETRAINED_FILE.is_file(), reason=f"no pretrained MobileNetV2 at {PRETRAINED_FILE}"
)
# The README's check: top-1 label of each check image resized to 224x224.
CHECK_LABELS = {
    "cat": "Egyptian cat",
    "bird": "chickadee",
    "grace_hopper": "military uniform",
    "dragonfly": "dragonfly",
    "sunflower": "daisy",
}


def imagenet_normalised(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


@needs_pretrained
def test_the_pretrained_file_loads_strictly_and_gives_the_readme_top1_labels() -> None:
    trunk = build_mobilenet_v2_trunk()
    load_pretrained_trunk(trunk, PRETRAINED_FILE)
    classifier = load_classifier(PRETRAINED_FILE)
    labels = (PRETRAINED_DIR / "check_images" / "imagenet_labels.txt").read_text().splitlines()
    assert len(labels) == 1001 and labels[0] == "background"
    for name, label in CHECK_LABELS.items():
        image = load_image(PRETRAINED_DIR / "check_images" / f"{name}.png")[None]
        image = F.interpolate(image, size=(224, 224), mode="bilinear", antialias=True)
        with torch.no_grad():
            pooled = trunk.eval()(imagenet_normalised(image)).mean((2, 3), keepdim=True)
            probabilities = classifier(pooled).flatten(1).softmax(1)
        top = int(probabilities.argmax())
        assert labels[top].split(",")[0] == label, name
        assert float(probabilities[0, top]) > 0.5, name


def test_same_padding_puts_the_odd_pixel_at_the_bottom_right() -> None:
    conv = SameConv2d(1, 1, 3, 2, bias=False)
    torch.nn.init.ones_(conv.weight)
    with torch.no_grad():
        even = conv(torch.ones(1, 1, 4, 4))  # pads 0 before, 1 after
        odd = conv(torch.ones(1, 1, 5, 5))  # pads 1 before, 1 after
    assert even[0, 0].tolist() == [[9.0, 6.0], [6.0, 4.0]]
    assert odd[0, 0].tolist() == [[4.0, 6.0, 4.0], [6.0, 9.0, 6.0], [4.0, 6.0, 4.0]]


def test_stages_end_at_stride_16_and_32_as_resnext_layer3_and_layer4() -> None:
    trunk = build_mobilenet_v2_trunk()
    x = torch.zeros(1, 3, 64, 96)
    shapes = []
    with torch.no_grad():
        for stage in trunk:
            x = stage(x)
            shapes.append(tuple(x.shape[1:]))
    assert len(trunk) == 8
    assert shapes[6] == (96, 4, 6) and shapes[7] == (1280, 2, 3)
    assert MobileNetV2Spec().stage_channels()[2:] == [96, 1280]


def test_key_map_covers_every_trunk_tensor_once() -> None:
    key_map = pretrained_key_map()
    trunk_keys = set(build_mobilenet_v2_trunk().state_dict())
    assert set(key_map.values()) == trunk_keys and len(key_map) == len(trunk_keys) == 104
    assert key_map["stem.weight"] == "0.layer.conv.weight"
    assert key_map["blocks.0.depthwise.bias"] == "1.0.depthwise.conv.bias"
    assert key_map["head.weight"] == "7.4.conv.weight"


def test_pretrained_loader_refuses_what_is_not_the_file(tmp_path: Path) -> None:
    trunk = build_mobilenet_v2_trunk()
    with pytest.raises(ValueError, match="not found"):
        load_pretrained_trunk(trunk, tmp_path / "absent.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_pretrained_trunk(trunk, tmp_path / "junk.safetensors")
    save_file({"stem.weight": torch.zeros(32, 3, 3, 3)}, tmp_path / "partial.safetensors")
    with pytest.raises(ValueError, match="not the MobileNetV2 1.0 file: missing"):
        load_pretrained_trunk(trunk, tmp_path / "partial.safetensors")
    inverse = {v: k for k, v in pretrained_key_map().items()}
    tensors = {inverse[k]: v for k, v in trunk.state_dict().items()}
    tensors["stem.weight"] = torch.zeros(32, 3, 5, 5)
    save_file(tensors, tmp_path / "wrong_shape.safetensors")
    with pytest.raises(ValueError, match="does not fit the MobileNetV2 trunk"):
        load_pretrained_trunk(trunk, tmp_path / "wrong_shape.safetensors")


def test_spec_dict_roundtrip_and_refusals() -> None:
    assert spec_to_dict(MobileNetV2Spec()) == {"kind": "mobilenet_v2"}
    assert spec_from_dict({"kind": "mobilenet_v2"}) == MobileNetV2Spec()
    for bad in ({"kind": "vgg"}, {"kind": "mobilenet_v2", "width": 0.5}):
        with pytest.raises(ValueError, match="bad trunk spec"):
            spec_from_dict(bad)
    with pytest.raises(ValueError, match="kind must be 'mobilenet_v2'"):
        MobileNetV2Spec(kind="vgg")


def test_a_mobilenet_standin_folder_round_trips_and_scores_through_metric_model(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    model = IQAModel(MobileNetV2Spec()).eval()
    folder = save_standin(model, [2.0, 1.0, 1.0], [30.0, 0.0, 0.0], tmp_path / "v2", epochs=0)
    loaded, k, b = load_standin("cpu", folder)
    assert loaded.spec == MobileNetV2Spec() and (k[0], b[0]) == (2.0, 30.0)
    image = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(1))
    metric = MetricModel("cpu", folder)
    with torch.no_grad():
        expected = model(imagenet_normalised(image))[-1] * 2.0 + 30.0
    image.requires_grad_(True)
    score = metric(image)
    torch.testing.assert_close(score.detach(), expected)
    score.sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
