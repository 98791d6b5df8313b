"""The stand-in quality metric: Linearity's design and heads on a small trunk, trained on CLIVE.

Used by ``model.MetricModel`` when the real ``p1q2.pth`` is absent: ``standin-metric-v2``
(the ImageNet-pretrained MobileNetV2 trunk of ``metrics.mobilenet_v2``) by default; v1 and the
other ResNeXt stand-ins stay loadable by folder. A stand-in folder holds
``model.safetensors`` (the ``IQAModel`` state dict), ``metric.json`` (trunk spec and the
``k``/``b`` lists mapping ``[regression, regr6, regr7]`` to the MOS scale, as in Linearity)
and ``manifest.json`` (sha256 of both plus how they were made). ``MetricModel`` scores
``model(x)[-1] * k[0] + b[0]``: higher is better, on CLIVE's MOS scale (about 0-100).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from common import paths
from common.atomic_write import save_tensors
from common.weights_manifest import MANIFEST, verify_manifest, write_manifest
from metrics.linearity import AnyTrunkSpec, IQAModel, TrunkSpec
from metrics.mobilenet_v2 import MobileNetV2Spec

logger = logging.getLogger(__name__)

STANDIN_SPEC = TrunkSpec(blocks=(1, 1, 1, 1), groups=8, width_per_group=8, stem_width=32)
STANDIN_DIR = paths.WEIGHTS_DIR / "standin-metric-v2"
"""The default stand-in, used when ``p1q2.pth`` is absent."""
STANDIN_V1_DIR = paths.WEIGHTS_DIR / "standin-metric-v1"
LEGACY_NAME = "standin"
"""v1's name from before v2: its datasets' ``attacks.json``, ``weights/uap-standin-v1``."""
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "metric.json"
TRAIN_COMMAND = "python scripts/train_metric.py --output {folder}"


def standin_name(folder: str | Path) -> str:
    """The name a stand-in folder's ``MetricModel`` carries (attack records, UAP folders):
    ``"standin"`` for v1, else the folder's name (``"standin-metric-v2"``)."""
    folder = Path(folder)
    return LEGACY_NAME if folder.resolve() == STANDIN_V1_DIR.resolve() else folder.name


def _missing_message(folder: Path, what: str) -> str:
    return (
        f"stand-in metric weights not found: {what} in {folder}. Create them with "
        f"`{TRAIN_COMMAND.format(folder=folder)}` (trains on CLIVE), or put the real "
        "Linearity p1q2.pth beside model.py."
    )


def spec_to_dict(spec: AnyTrunkSpec) -> dict[str, Any]:
    """``TrunkSpec`` -> JSON-ready dict (``blocks`` as a list); ``MobileNetV2Spec`` ->
    ``{"kind": "mobilenet_v2"}``."""
    info = asdict(spec)
    if isinstance(spec, MobileNetV2Spec):
        return info
    info["blocks"] = list(spec.blocks)
    return info


def spec_from_dict(info: dict[str, Any], source: str = "metric.json") -> AnyTrunkSpec:
    """Inverse of ``spec_to_dict``; ``ValueError`` naming ``source`` on bad fields. A spec
    without ``kind`` is a ResNeXt (every folder written before the MobileNetV2 trunk)."""
    if isinstance(info, dict) and info.get("kind", "resnext") != "resnext":
        if info != {"kind": "mobilenet_v2"}:
            raise ValueError(f"{source}: bad trunk spec {info!r}: unknown kind or extra fields")
        return MobileNetV2Spec()
    try:
        blocks = tuple(int(n) for n in info["blocks"])
        spec = TrunkSpec(
            blocks=blocks,  # type: ignore[arg-type]
            groups=int(info["groups"]),
            width_per_group=int(info["width_per_group"]),
            stem_width=int(info["stem_width"]),
            expansion=int(info.get("expansion", 4)),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{source}: bad trunk spec {info!r}: {err}") from err
    return spec


def _float_list(value: Any, what: str, source: Path) -> list[float]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{source}: '{what}' must be a non-empty list of numbers, got {value!r}")
    try:
        return [float(v) for v in value]
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: '{what}' must be numbers, got {value!r}") from err


def load_standin(
    device: torch.device | str = "cpu", folder: str | Path = STANDIN_DIR
) -> tuple[IQAModel, list[float], list[float]]:
    """Load a stand-in folder: ``(IQAModel in eval mode on device, k, b)``.

    Raises ``FileNotFoundError`` if the folder or its files are absent (naming the command that
    makes them), ``WeightsIntegrityError`` if a file does not match the manifest, and
    ``ValueError`` if ``metric.json`` or the state dict do not fit ``IQAModel``.
    """
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise FileNotFoundError(_missing_message(folder, MANIFEST))
    manifest = verify_manifest(folder)
    listed = set(manifest.get("files", {}))
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if name not in listed:
            raise FileNotFoundError(_missing_message(folder, f"{name} (not in {MANIFEST})"))
    config_path = folder / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path} is not valid JSON: {err}") from err
    if not isinstance(config, dict) or "spec" not in config:
        raise ValueError(f"{config_path} must hold an object with 'spec', 'k' and 'b'")
    spec = spec_from_dict(config["spec"], str(config_path))
    k = _float_list(config.get("k"), "k", config_path)
    b = _float_list(config.get("b"), "b", config_path)
    try:
        state = load_file(folder / WEIGHTS_FILE, device=str(torch.device(device)))
    except SafetensorError as err:
        raise ValueError(f"cannot read {folder / WEIGHTS_FILE}: {err}") from err
    model = IQAModel(spec)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{folder / WEIGHTS_FILE} does not fit IQAModel({spec}): {err}") from err
    logger.info("loaded stand-in metric from %s (%s)", folder, manifest.get("version", "?"))
    return model.to(device).eval(), k, b


def save_standin(
    model: IQAModel,
    k: list[float],
    b: list[float],
    folder: str | Path,
    name: str = "standin-metric",
    version: str = "1",
    **training: Any,
) -> Path:
    """Write ``model`` + ``k``/``b`` as a stand-in folder with a manifest; return the folder.

    ``training`` (data, split sizes, epochs, wall time, command, val SRCC...) goes into the
    manifest. Refuses (``FileExistsError``) to touch a folder that already has a manifest.
    """
    folder = Path(folder)
    if (folder / MANIFEST).exists():
        raise FileExistsError(
            f"{folder} already holds released weights ({MANIFEST}); choose a new folder"
        )
    if not isinstance(model, IQAModel):
        raise ValueError(f"model must be an IQAModel, got {type(model).__name__}")
    k = [float(v) for v in k]
    b = [float(v) for v in b]
    if not k or len(k) != len(b):
        raise ValueError(f"k and b must be non-empty lists of equal length, got {k}, {b}")
    folder.mkdir(parents=True, exist_ok=True)
    state = {key: t.detach().cpu().contiguous() for key, t in model.state_dict().items()}
    save_tensors(state, folder / WEIGHTS_FILE, metadata={"format": "pt"})
    config = {
        "spec": spec_to_dict(model.spec),
        "k": k,
        "b": b,
        "outputs": "k[i], b[i] map output [regression, regr6, regr7][i] to MOS",
        "input": "ImageNet-normalised RGB; MetricModel takes float NCHW in [0, 1]",
    }
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    write_manifest(folder, name, version, training=training)
    return folder
