"""Build the competition submission: a folder (and a zip of it) holding ``defense.py`` and all
it needs, to be copied next to the competition's own ``model.py`` and ``test.py``.

    python scripts/export_submission.py                      # dist/submission + .zip
    python scripts/export_submission.py --out dist/sub --t-star 40 --steps 2 --force

Layout of the bundle::

    defense.py                       the project's file, imports redirected
    iqa_purify_runtime/              common/, diffusion/, schedulers/, purifier/ (runtime
                                     modules only)
    iqa_purify_runtime/purifier/defaults.json   the knobs baked in
    weights/ddpm-v<N>/               config, safetensors, scheduler config, manifest
    weights/detector-v<N>/           the perturbation detector, when the knobs use it
    bundle.json                      knobs, weights, source commit, sha256 of every file

Runtime needs: torch and diffusers only (and safetensors, which diffusers brings; no einops,
scikit-image, scipy, accelerate); the bundle never imports a module called ``model``. Files are
copied from the project (one source of truth) with their imports redirected to the private
package; ``Defense(device, seed=s)`` of the bundle gives bit-identical output to the project's
with the same knobs and weights.
Knobs left out (``--t-star`` ... ``--unsharp-radius``) take the project's current defaults
(``purifier/defaults.json`` if present, else the provisional ones). An existing output is
refused unless ``--force``, which only replaces a folder this script made.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import diffusers
import torch

from common.atomic_write import default_folder_mode
from common.paths import ROOT, WEIGHTS_DIR
from common.submission_source import (
    bundle_import_problems,
    prune_init,
    rewrite_imports,
)
from common.weights_manifest import MANIFEST, sha256_file, verify_manifest
from purifier import (
    PurifierConfig,
    load_default_config,
    newest_detector,
    resolve_weights,
)
from purifier.config import config_from_options
from purifier.options import add_purifier_knobs
from purifier.perturbation_detector import RELEASE_PATTERN as RELEASE_DETECTOR
from purifier.weights import RELEASE_PATTERN

logger = logging.getLogger("export_submission")

RUNTIME_PACKAGE = "iqa_purify_runtime"
# Modules of each package that run inside Defense; the rest (training, benchmarks, folder
# planning) stay out and their re-exports are pruned from the package __init__.
RUNTIME_MODULES = {
    "common": ("atomic_write", "devices", "image_checks", "weights_manifest"),
    "diffusion": ("denoiser", "loading", "noise", "precision", "purification"),
    "schedulers": ("factory", "timestep_spacing"),
    "purifier": (
        "config",
        "diffusion_purifier",
        "perturbation_detector",
        "tiling",
        "unsharp",
        "weights",
    ),
}
# Project module -> bundled module. The bundle has no ``model`` (the competition brings its
# own): a bundled file that imported it would be named by ``bundle_import_problems``.
IMPORT_MAP = {name: f"{RUNTIME_PACKAGE}.{name}" for name in RUNTIME_MODULES}
THIRD_PARTY = ("torch", "diffusers", "safetensors", "tqdm")  # safetensors comes with diffusers
DEFAULTS_NAME = "defaults.json"
BUNDLE_INFO = "bundle.json"
BUNDLE_FORMAT = 1
DEFAULT_OUT = ROOT / "dist" / "submission"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same tree gives the same zip

GENERATED_HEADER = "# Copied from {source} by scripts/export_submission.py: edit the original.\n"
PACKAGE_DOC = '''"""Runtime of the iqa-purify defense, vendored by scripts/export_submission.py.

A private name, so nothing here clashes with the competition's own modules (model.py).
"""
'''


class ExportError(Exception):
    """The bundle cannot be written as asked (existing output, bad weights folder)."""


@dataclass(frozen=True)
class Bundle:
    """A written bundle: its folder, zip (None with ``--no-zip``) and sizes in bytes."""

    folder: Path
    zip_path: Path | None
    folder_bytes: int
    zip_bytes: int | None
    config: PurifierConfig
    weights: Path


def zip_path_for(out: Path) -> Path:
    """``dist/submission`` -> ``dist/submission.zip``."""
    return out.with_name(out.name + ".zip")


def bundled_weights_name(
    folder: Path, manifest: dict, prefix: str = "ddpm", pattern: re.Pattern[str] = RELEASE_PATTERN
) -> str:
    """Name of a weights folder inside the bundle, where the bundled ``Defense`` finds it as
    the newest release: ``folder``'s own if it is a release name (``<prefix>-v<N>``, matching
    ``pattern``), else ``<prefix>-v<manifest version>``; ExportError if neither is valid."""
    if pattern.fullmatch(folder.name):
        return folder.name
    name = f"{prefix}-v{manifest.get('version')}"
    if pattern.fullmatch(name):
        return name
    raise ExportError(
        f"{folder} is not named {prefix}-v<N> and its manifest version "
        f"{manifest.get('version')!r} does not give one: copy it to a {prefix}-v<N> folder first"
    )


def export_submission(
    out: str | Path,
    config: PurifierConfig | None = None,
    weights: str | Path | None = None,
    make_zip: bool = True,
    force: bool = False,
    detector: str | Path | None = None,
) -> Bundle:
    """Write the bundle to ``out`` (and ``out.zip`` if ``make_zip``).

    ``config``: the knobs baked in (default: the project's current defaults); ``weights``: the
    denoiser folder (default: the newest released ``weights/ddpm-v<N>``), checked against its
    manifest before and after copying. When ``config.uses_detector`` (gate or noise-level
    ramp) the perturbation detector
    ``detector`` (default: the newest released ``weights/detector-v<N>``) is bundled too.
    ExportError if ``out`` or its zip exists (unless
    ``force`` and ``out`` is a bundle made here), ``purifier.MissingWeightsError`` /
    ``weights_manifest.WeightsIntegrityError`` for bad weights.
    """
    out = Path(out).resolve()
    config = load_default_config() if config is None else config
    source_weights = resolve_weights(weights, WEIGHTS_DIR).resolve()
    manifest = verify_manifest(source_weights)
    weights_name = bundled_weights_name(source_weights, manifest)
    if config.uses_detector:
        source_detector = Path(detector or newest_detector(WEIGHTS_DIR)).resolve()
        detector_manifest = verify_manifest(source_detector)
        detector_name = bundled_weights_name(
            source_detector, detector_manifest, "detector", RELEASE_DETECTOR
        )
    zip_path = zip_path_for(out) if make_zip else None
    _check_outputs(out, zip_path, force)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(default_folder_mode())  # mkdtemp's 0o700 would make the bundle owner-only
    try:
        _write_runtime(staging)
        (staging / RUNTIME_PACKAGE / "purifier" / DEFAULTS_NAME).write_text(
            json.dumps(config.to_dict(), indent=2) + "\n"
        )
        bundled_weights = staging / "weights" / weights_name
        _copy_weights(source_weights, manifest, bundled_weights)
        if config.uses_detector:
            _copy_weights(source_detector, detector_manifest, staging / "weights" / detector_name)
        problems = bundle_import_problems(staging, RUNTIME_PACKAGE, THIRD_PARTY)
        if problems:
            raise RuntimeError("the bundle would not import cleanly:\n" + "\n".join(problems))
        detector_info = (
            _weights_info(source_detector, detector_manifest, detector_name)
            if config.uses_detector
            else None
        )
        weights_info = _weights_info(source_weights, manifest, weights_name)
        _write_info(staging, config, weights_info, detector_info)
        _replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if zip_path is not None:
        _write_zip(out, zip_path)
    return Bundle(
        folder=out,
        zip_path=zip_path,
        folder_bytes=sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
        zip_bytes=zip_path.stat().st_size if zip_path else None,
        config=config,
        weights=source_weights,
    )


def _check_outputs(out: Path, zip_path: Path | None, force: bool) -> None:
    if out.exists():
        if not force:
            raise ExportError(f"{out} exists: pass --force to replace it")
        if not out.is_dir() or not (out / BUNDLE_INFO).is_file():
            raise ExportError(
                f"{out} exists and is not a bundle written by this script (no {BUNDLE_INFO}): "
                "refusing to replace it even with --force"
            )
    if zip_path is not None and zip_path.exists():
        if not force:
            raise ExportError(f"{zip_path} exists: pass --force to replace it")
        if not zip_path.is_file():
            raise ExportError(f"{zip_path} exists and is not a file")


def _replace_folder(new: Path, out: Path) -> None:
    """Move ``new`` to ``out``; an old ``out`` is moved aside first and deleted last."""
    if not out.exists():
        new.rename(out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    out.rename(old / out.name)
    new.rename(out)
    shutil.rmtree(old)


def _write_runtime(staging: Path) -> None:
    """defense.py and the private runtime package, copied with redirected imports."""
    package = staging / RUNTIME_PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text(PACKAGE_DOC)
    _copy_module(ROOT / "defense.py", staging / "defense.py")
    for name, modules in RUNTIME_MODULES.items():
        (package / name).mkdir()
        dropped = {
            f"{name}.{p.stem}"
            for p in (ROOT / name).glob("*.py")
            if p.stem not in modules and p.stem != "__init__"
        }
        init = prune_init((ROOT / name / "__init__.py").read_text(), dropped, f"{name}/__init__.py")
        _write_module(init, f"{name}/__init__.py", package / name / "__init__.py")
        for module in modules:
            _copy_module(ROOT / name / f"{module}.py", package / name / f"{module}.py")


def _copy_module(source: Path, target: Path) -> None:
    rel = source.relative_to(ROOT).as_posix()
    _write_module(source.read_text(), rel, target)


def _write_module(text: str, rel: str, target: Path) -> None:
    text = rewrite_imports(text, IMPORT_MAP, rel)
    target.write_text(GENERATED_HEADER.format(source=rel) + text)


def _copy_weights(source: Path, manifest: dict, target: Path) -> None:
    """Copy the files the manifest lists (plus the manifest) and check the copy."""
    for rel in [*manifest["files"], MANIFEST]:
        destination = target / rel
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / rel, destination)
    verify_manifest(target)


def _source_commit() -> dict[str, str | bool | None]:
    """The project's git commit and whether the shipped sources differ from it."""
    tracked = ["defense.py", *RUNTIME_MODULES]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", *tracked],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "modified": None}
    return {"commit": commit, "modified": bool(status.strip())}


def _weights_info(source: Path, manifest: dict, name: str) -> dict[str, Any]:
    """``bundle.json``'s entry for one bundled weights folder."""
    return {
        "folder": f"weights/{name}",
        "source": str(source.relative_to(ROOT) if source.is_relative_to(ROOT) else source),
        "name": manifest.get("name"),
        "version": manifest.get("version"),
    }


def _write_info(
    staging: Path,
    config: PurifierConfig,
    weights: dict[str, Any],
    detector: dict[str, Any] | None,
) -> None:
    """``bundle.json``: knobs, bundled weights (``detector`` is None when not bundled), source
    commit, versions and the sha256 of every file."""
    files = {
        p.relative_to(staging).as_posix(): sha256_file(p)
        for p in sorted(staging.rglob("*"))
        if p.is_file()
    }
    info = {
        "format": BUNDLE_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "usage": "from defense import Defense; Defense(device).apply_defense(images)",
        "config": config.to_dict(),
        "weights": weights,
        "detector": detector,
        "source": _source_commit(),
        "exported_with": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
        },
        "files": files,
    }
    (staging / BUNDLE_INFO).write_text(json.dumps(info, indent=2) + "\n")


def _write_zip(folder: Path, zip_path: Path) -> None:
    """Zip the folder's files (paths relative to it, sorted, fixed timestamps), atomically."""
    partial = zip_path.with_name(zip_path.name + ".part")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                entry = zipfile.ZipInfo(path.relative_to(folder).as_posix(), ZIP_DATE)
                entry.compress_type = zipfile.ZIP_DEFLATED
                entry.external_attr = 0o644 << 16
                with path.open("rb") as src, archive.open(entry, "w") as dst:
                    shutil.copyfileobj(src, dst)
    partial.replace(zip_path)


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.2f} MB ({size:,} bytes)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="export_submission",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="bundle folder (default: dist/submission)"
    )
    parser.add_argument(
        "--zip",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also write <out>.zip (default: yes)",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="denoiser folder with manifest.json (default: newest weights/ddpm-v*)",
    )
    parser.add_argument(
        "--detector",
        type=Path,
        default=None,
        help="detector folder bundled when gate > 0 or t_star_max > 0 "
        "(default: newest weights/detector-v*)",
    )
    parser.add_argument("--force", action="store_true", help="replace a bundle written before")
    knobs = parser.add_argument_group("knobs baked into the bundle (default: project defaults)")
    add_purifier_knobs(knobs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_options(args)
        bundle = export_submission(
            args.out, config, args.weights, args.zip, args.force, args.detector
        )
    except (ExportError, ValueError, FileNotFoundError) as err:
        raise SystemExit(f"export_submission: error: {err}") from err
    knobs = ", ".join(f"{k}={v}" for k, v in bundle.config.to_dict().items())
    print(f"bundle {bundle.folder}: {_megabytes(bundle.folder_bytes)}")
    if bundle.zip_path is not None:
        print(f"zip    {bundle.zip_path}: {_megabytes(bundle.zip_bytes or 0)}")
    print(f"weights {bundle.weights}")
    print(f"knobs  {knobs}")
    return 0

