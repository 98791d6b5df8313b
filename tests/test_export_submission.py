"""The competition bundle (``scripts/export_submission.py``): built from the project's files,
runs without the project, torch and diffusers only, bit-identical to the project's Defense."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

from common.atomic_write import default_folder_mode
from common.paths import ROOT
from common.submission_source import bundle_import_problems, prune_init, rewrite_imports
from common.weights_manifest import WeightsIntegrityError, sha256_file, verify_manifest
from defense import Defense
from purifier import (
    MissingWeightsError,
    PerturbationDetector,
    PurifierConfig,
    load_default_config,
    load_detector,
)
from purifier import submission as export
from purifier.perturbation_detector import save_detector

PACKAGE = export.RUNTIME_PACKAGE
PINNED = {
    "t_star": 30,
    "steps": 3,
    "sampler": "ddpm",
    "spacing": "quadratic",
    "ensemble": 2,
    "unsharp_amount": 0.5,
    "unsharp_radius": 0.8,
    "gate": 0.0,
    "t_star_max": 0,
    "strength_ramp": 6.0,
    "precision": "float32",
}


def images(batch: int = 2, height: int = 20, width: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def bundle(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> export.Bundle:
    """A bundle with the project's default knobs and the tiny weights."""
    out = tmp_path_factory.mktemp("export") / "submission"
    return export.export_submission(out, weights=tiny_weights)


@contextlib.contextmanager
def bundle_defense(folder: Path) -> Iterator[ModuleType]:
    """The bundle's ``defense`` module, loaded by path in this process (the project's own
    ``defense`` stays untouched); its runtime package is unloaded afterwards."""

    def unload() -> None:
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]

    unload()
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location("submission_defense", folder / "defense.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert Path(module.WEIGHTS_DIR) == folder.resolve() / "weights"
        yield module
    finally:
        sys.path.remove(str(folder))
        unload()


# --- the import rewrite ----------------------------------------------------------------------


def test_rewrite_imports_redirects_project_modules_only() -> None:
    source = textwrap.dedent(
        '''\
        """Doc: from diffusion import nothing."""
        from __future__ import annotations
        import torch
        from diffusion.noise import sigma_to_timestep
        from diffusion import (
            load_denoiser,
            purify,
        )
        from diffusionx import a
        from model import check_images as check
        from .sibling import b


        def f():
            from schedulers import make_scheduler

            return make_scheduler
        '''
    )
    mapping = {"diffusion": "pkg.diffusion", "schedulers": "pkg.schedulers", "model": "pkg.ic"}
    assert rewrite_imports(source, mapping) == textwrap.dedent(
        '''\
        """Doc: from diffusion import nothing."""
        from __future__ import annotations
        import torch
        from pkg.diffusion.noise import sigma_to_timestep
        from pkg.diffusion import (
            load_denoiser,
            purify,
        )
        from diffusionx import a
        from pkg.ic import check_images as check
        from .sibling import b


        def f():
            from pkg.schedulers import make_scheduler

            return make_scheduler
        '''
    )


def test_rewrite_imports_longest_prefix_wins() -> None:
    mapping = {"purifier": "pkg.purifier", "purifier.config": "pkg.knobs"}
    source = "from purifier.config import A\nfrom purifier.weights import B\n"
    assert rewrite_imports(source, mapping) == (
        "from pkg.knobs import A\nfrom pkg.purifier.weights import B\n"
    )


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("import diffusion\n", "import diffusion"),
        ("import os, diffusion.noise as n\n", "import diffusion.noise"),
        ("from diffusion import (\n", "cannot parse"),
    ],
)
def test_rewrite_imports_refuses_what_it_cannot_redirect(source: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rewrite_imports(source, {"diffusion": "pkg.diffusion"})


def test_prune_init_drops_left_out_modules_and_their_names() -> None:
    source = textwrap.dedent(
        '''\
        """Package."""

        from pkg.kept import A, B
        from pkg.training import (
            Sampler,
            loss,
        )
        from pkg.tiles import tile as tiled

        __all__ = ["A", "B", "Sampler", "loss", "tiled"]
        '''
    )
    assert prune_init(source, {"pkg.training", "pkg.tiles"}) == textwrap.dedent(
        '''\
        """Package."""

        from pkg.kept import A, B

        __all__ = [
            "A",
            "B",
        ]
        '''
    )


def test_bundle_import_problems_names_every_bad_import(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("import json\nX = 1\n\ndef f():\n    pass\n")
    (tmp_path / "main.py").write_text(
        "import os\nimport torch\nfrom pkg.a import X, f\nfrom pkg import a\n"
        "import einops\nfrom pkg.missing import Y\nfrom pkg.a import Z\n"
    )
    (tmp_path / "pkg" / "b.py").write_text("from .a import X\nfrom . import zz\n")
    problems = bundle_import_problems(tmp_path, "pkg", ["torch"])
    assert problems == [
        "main.py:5: imports 'einops', not allowed in the bundle",
        "main.py:6: module 'pkg.missing' is not in the bundle",
        "main.py:7: 'pkg.a' defines no 'Z'",
        "pkg/b.py:2: 'pkg' defines no 'zz'",
    ]


# --- the bundle ------------------------------------------------------------------------------


def test_bundle_holds_only_the_runtime(bundle: export.Bundle, tiny_weights: Path) -> None:
    folder = bundle.folder
    assert sorted(p.name for p in folder.iterdir()) == [
        "bundle.json",
        "defense.py",
        PACKAGE,
        "weights",
    ]
    assert [p.name for p in folder.glob("*.py")] == ["defense.py"]  # no model.py
    assert folder.stat().st_mode & 0o777 == default_folder_mode()  # not mkdtemp's 0o700
    package = folder / PACKAGE
    assert {p.relative_to(package).as_posix() for p in package.rglob("*.py")} == {
        "__init__.py",
        "common/__init__.py",
        "common/image_checks.py",
        "common/weights_manifest.py",
        "common/atomic_write.py",
        "common/devices.py",
        "diffusion/__init__.py",
        "diffusion/denoiser.py",
        "diffusion/loading.py",
        "diffusion/noise.py",
        "diffusion/precision.py",
        "diffusion/purification.py",
        "schedulers/__init__.py",
        "schedulers/factory.py",
        "schedulers/timestep_spacing.py",
        "purifier/__init__.py",
        "purifier/config.py",
        "purifier/diffusion_purifier.py",
        "purifier/perturbation_detector.py",
        "purifier/tiling.py",
        "purifier/unsharp.py",
        "purifier/weights.py",
    }
    allowed = ["torch", "diffusers", "safetensors", "tqdm"]
    assert bundle_import_problems(folder, PACKAGE, allowed) == []
    # Copies of the real files: identical once the generated header and imports are undone.
    bundled = (folder / PACKAGE / "schedulers" / "timestep_spacing.py").read_text()
    assert bundled.split("\n", 1)[1] == (ROOT / "schedulers" / "timestep_spacing.py").read_text()
    defaults = json.loads((folder / PACKAGE / "purifier" / "defaults.json").read_text())
    assert defaults == load_default_config().to_dict()
    assert verify_manifest(folder / "weights" / "ddpm-v1")["name"] == "tiny"
    assert tree(folder / "weights" / "ddpm-v1") == tree(tiny_weights)
    info = json.loads((folder / "bundle.json").read_text())
    assert info["config"] == defaults and info["weights"]["folder"] == "weights/ddpm-v1"
    listed = {p: sha256_file(folder / p) for p in tree(folder) if p != "bundle.json"}
    assert info["files"] == listed
    assert bundle.folder_bytes == sum(len(b) for b in tree(folder).values())


def test_bundle_runs_alone_and_matches_the_project(
    bundle: export.Bundle, tiny_weights: Path, tmp_path: Path
) -> None:
    """Competition layout: the bundle beside a model.py of its own, the project not importable,
    einops/scikit-image/scipy/accelerate absent, run from another working directory."""
    run_dir = tmp_path / "competition"
    shutil.copytree(bundle.folder, run_dir)
    (run_dir / "model.py").write_text('raise ImportError("the bundle imported model.py")\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    x = images()
    torch.save(x, tmp_path / "x.pt")
    script = textwrap.dedent(
        f"""\
        import importlib.util, os, sys
        for name in ("einops", "skimage", "scipy", "accelerate"):
            sys.modules[name] = None  # absent: importing them fails
        # a machine where the project is pip-installed (editable) must not leak it in
        sys.meta_path[:] = [
            f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")
        ]
        sys.path[:] = [p for p in sys.path if "__editable__" not in p and p != {str(ROOT)!r}]
        sys.path.insert(0, os.getcwd())  # as `python test.py` run from the bundle folder
        project = ("purifier", "diffusion", "schedulers", "weights_manifest", "paths", "defenses")
        found = [n for n in project if importlib.util.find_spec(n) is not None]
        assert not found, f"project modules importable: {{found}}"
        import torch
        torch.set_num_threads({torch.get_num_threads()})  # same reduction order as the parent
        from defense import Defense
        os.chdir({str(elsewhere)!r})
        defense = Defense(device="cpu", seed=0)
        x = torch.load({str(tmp_path / "x.pt")!r}, weights_only=True)
        with torch.no_grad():
            out = torch.stack([defense.apply_defense(x), defense.apply_defense(x)])
        torch.save(out, {str(tmp_path / "out.pt")!r})
        assert "model" not in sys.modules
        print(defense.weights)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(
        [sys.executable, "-I", "-c", script],
        cwd=run_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(run_dir / "weights" / "ddpm-v1")
    out = torch.load(tmp_path / "out.pt", weights_only=True)

    project = Defense(weights=tiny_weights, seed=0)
    with torch.no_grad():
        expected = torch.stack([project.apply_defense(x), project.apply_defense(x)])
    assert torch.equal(out, expected)
    assert not torch.equal(out[0], out[1])  # the seeded sequence goes on between calls


def test_pinned_knobs_are_baked_in(
    tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pinned"
    argv = ["--out", str(out), "--weights", str(tiny_weights), "--no-zip"]
    for knob, value in PINNED.items():
        argv += [f"--{knob.replace('_', '-')}", str(value)]
    assert export.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"bundle {out.resolve()}: " in printed and " MB (" in printed
    assert "zip" not in printed and not export.zip_path_for(out).exists()
    defaults = json.loads((out / PACKAGE / "purifier" / "defaults.json").read_text())
    assert defaults == PINNED

    x = images(seed=4)
    with bundle_defense(out) as module:
        submitted = module.Defense("cpu", seed=3)
        assert submitted.config.to_dict() == PINNED
        assert submitted.weights == out.resolve() / "weights" / "ddpm-v1"
        got = submitted.apply_defense(x)
    expected = Defense(weights=tiny_weights, seed=3, config=PurifierConfig(**PINNED))
    assert torch.equal(got, expected.apply_defense(x))


@pytest.mark.parametrize(("use", "levels"), [("gate", [0, 20]), ("ramp", [60, 60])])
def test_a_bundle_using_the_detector_carries_it_and_matches_the_project(
    use: str, levels: list[int], tiny_weights: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    detector = save_detector(
        PerturbationDetector((4, 4, 4, 4)), tmp_path / "det" / "detector-v3", "3"
    )
    x = images(seed=5)
    if use == "gate":  # one image over the gate, one under
        gate = float(load_detector(detector)(x).mean())
        knobs = {"t_star": 20, "t_star_max": 0, "gate": gate}
    else:  # any estimate reaches the top of the ramp
        knobs = {"t_star": 20, "t_star_max": 60, "strength_ramp": 1e-3}
    out = tmp_path / use
    flags = [f"--{knob.replace('_', '-')}={value}" for knob, value in knobs.items()]
    argv = ["--out", str(out), "--weights", str(tiny_weights), "--detector", str(detector)]
    assert export.main([*argv, "--no-zip", *flags]) == 0
    assert verify_manifest(out / "weights" / "detector-v3")["version"] == "3"
    detector_info = json.loads((out / "bundle.json").read_text())["detector"]
    assert detector_info["folder"] == "weights/detector-v3" and detector_info["version"] == "3"
    with bundle_defense(out) as module:
        submitted = module.Defense("cpu", seed=3)
        assert sorted(submitted.purifier.plan(x)) == levels
        got = submitted.apply_defense(x)
    project = Defense(weights=tiny_weights, detector=detector, seed=3, **knobs)
    assert torch.equal(got, project.apply_defense(x))


def test_zip_unpacks_to_the_same_tree(bundle: export.Bundle, tmp_path: Path) -> None:
    assert bundle.zip_path == bundle.folder.with_name("submission.zip")
    assert bundle.zip_bytes == bundle.zip_path.stat().st_size
    with zipfile.ZipFile(bundle.zip_path) as archive:
        assert "defense.py" in archive.namelist()  # at the root, not under a folder
        archive.extractall(tmp_path / "unzipped")
    assert tree(tmp_path / "unzipped") == tree(bundle.folder)


def test_existing_output_is_refused_unless_forced(tiny_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub"
    export.export_submission(out, weights=tiny_weights)
    (out / "stale.txt").write_text("left from an old export")
    with pytest.raises(export.ExportError, match="exists: pass --force"):
        export.export_submission(out, weights=tiny_weights)
    with pytest.raises(SystemExit, match="exists: pass --force"):
        export.main(["--out", str(out), "--weights", str(tiny_weights)])
    assert (out / "stale.txt").is_file()

    shutil.rmtree(out)
    with pytest.raises(export.ExportError, match=r"sub\.zip exists"):
        export.export_submission(out, weights=tiny_weights)
    assert not out.exists()

    export.export_submission(out, weights=tiny_weights, make_zip=False)
    (out / "stale.txt").write_text("left from an old export")
    bundle = export.export_submission(
        out, PurifierConfig(**PINNED), weights=tiny_weights, force=True
    )
    assert not (out / "stale.txt").exists()
    info = json.loads((out / "bundle.json").read_text())
    assert info["config"] == PINNED and info["detector"] is None  # PINNED uses no detector
    with zipfile.ZipFile(bundle.zip_path) as archive:
        assert json.loads(archive.read("bundle.json"))["config"] == PINNED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub", "sub.zip"]  # nothing left over


def test_force_never_replaces_a_folder_it_did_not_write(tiny_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(export.ExportError, match="not a bundle written by this script"):
        export.export_submission(out, weights=tiny_weights, force=True)
    assert tree(out) == {"notes.txt": b"keep me"}


def test_bad_weights_are_refused_and_nothing_is_written(tiny_weights: Path, tmp_path: Path) -> None:
    altered = tmp_path / "ddpm-v7"
    shutil.copytree(tiny_weights, altered)
    with (altered / "diffusion_pytorch_model.safetensors").open("ab") as fh:
        fh.write(b"\0")
    out = tmp_path / "out" / "sub"
    with pytest.raises(WeightsIntegrityError, match="does not match its manifest"):
        export.export_submission(out, weights=altered)
    with pytest.raises(MissingWeightsError, match="does not exist"):
        export.export_submission(out, weights=tmp_path / "nowhere")
    with pytest.raises(SystemExit, match="does not exist"):
        export.main(["--out", str(out), "--weights", str(tmp_path / "nowhere")])
    assert not (tmp_path / "out").exists()


def test_weights_folder_name_in_the_bundle(tiny_weights: Path, tmp_path: Path) -> None:
    snapshot = tmp_path / "ema_latest"  # a training snapshot: named by its manifest version
    shutil.copytree(tiny_weights, snapshot)
    ungated = PurifierConfig()  # gate 0: the denoiser is the only weights folder
    bundle = export.export_submission(tmp_path / "sub", ungated, snapshot, make_zip=False)
    assert [p.name for p in (bundle.folder / "weights").iterdir()] == ["ddpm-v0"]
    manifest = json.loads((snapshot / "manifest.json").read_text())
    assert export.bundled_weights_name(tiny_weights, manifest) == "ddpm-v1"
    with pytest.raises(export.ExportError, match="not named ddpm-v<N>"):
        export.bundled_weights_name(snapshot, {"version": "final"})
    detector = save_detector(PerturbationDetector((2, 2, 2, 2)), tmp_path / "my-detector", "4")
    gated = PurifierConfig(gate=0.5)
    bundle = export.export_submission(
        tmp_path / "gated", gated, tiny_weights, make_zip=False, detector=detector
    )
    assert sorted(p.name for p in (bundle.folder / "weights").iterdir()) == [
        "ddpm-v1",
        "detector-v4",
    ]
    odd = save_detector(PerturbationDetector((2, 2, 2, 2)), tmp_path / "odd", "detector-v1")
    with pytest.raises(export.ExportError, match="not named detector-v<N>"):
        export.export_submission(
            tmp_path / "refused", gated, tiny_weights, make_zip=False, detector=odd
        )
    assert not (tmp_path / "refused").exists()


def test_default_weights_are_the_newest_release(
    tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "WEIGHTS_DIR", tiny_weights.parent)
    bundle = export.export_submission(tmp_path / "sub", make_zip=False)
    assert bundle.weights == tiny_weights.resolve()
    monkeypatch.setattr(export, "WEIGHTS_DIR", tmp_path / "empty")
    with pytest.raises(MissingWeightsError, match="train_ddpm.py"):
        export.export_submission(tmp_path / "other")


def test_bad_knobs_are_refused(tiny_weights: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sub"
    with pytest.raises(SystemExit) as info:  # at parse time
        export.main(["--out", str(out), "--weights", str(tiny_weights), "--steps", "0"])
    assert info.value.code == 2 and "--steps: must be an integer >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="unsharp_amount must be a finite number >= 0"):
        export.main(["--out", str(out), "--weights", str(tiny_weights), "--unsharp-amount", "-1"])
    assert not out.exists()


# --- the repo's harness on the bundle --------------------------------------------------------


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    from evaluation import harness as module

    return module


def brightness(batch: torch.Tensor) -> torch.Tensor:
    """A toy metric: ``10 + 100 * mean pixel``, ``(B, 1)``."""
    return 10.0 + 100.0 * batch.double().mean(dim=(1, 2, 3)).unsqueeze(1)


def test_harness_scores_the_bundle_like_the_project(
    bundle: export.Bundle, tiny_weights: Path, harness: ModuleType, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        reference = rng.integers(20, 230, size=(32, 32, 3), dtype=np.uint8)
        (tmp_path / "reference").mkdir(exist_ok=True)
        Image.fromarray(reference).save(tmp_path / "reference" / name)
        for attack in ("fgsm", "madc"):
            noise = rng.integers(-10, 11, size=reference.shape)
            attacked = np.clip(reference.astype(int) + noise, 0, 255).astype(np.uint8)
            (tmp_path / "attacked" / attack).mkdir(parents=True, exist_ok=True)
            Image.fromarray(attacked).save(tmp_path / "attacked" / attack / name)
    pairs = harness.collect_pairs(tmp_path)
    assert len(pairs) == 4

    with bundle_defense(bundle.folder) as module:
        records = harness.evaluate(pairs, module.Defense("cpu", seed=0), brightness, 2, "cpu")
    expected = harness.evaluate(
        pairs, Defense(weights=tiny_weights, seed=0), brightness, 2, "cpu", progress=False
    )
    strip = [{k: v for k, v in vars(r).items() if k != "seconds"} for r in (*records, *expected)]
    assert strip[:4] == strip[4:]
    rows = harness.aggregate(records)
    assert [row["Attack"] for row in rows] == ["fgsm", "madc", "All Attacks"]
    total = rows[-1]
    assert 0.3 < total["Quality Score"] < 1.0 and 0 <= total["Gain Score"] < 100
    assert np.isfinite([total[c] for c in harness.AVERAGED_COLUMNS]).all()
