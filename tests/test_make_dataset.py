"""scripts/make_dataset.py: layout, names, resume, settings record, CLI."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from attacks import dataset as make_dataset_script
from attacks.dataset import make_dataset, parse_attacks, select_images
from common.image_checks import check_images
from common.image_io import centre_crop, load_image, save_image
from common.seeds import name_seed

ATTACKS = ["fgsm", "ifgsm"]


class ToyMetric(nn.Module):
    """A tiny smooth conv net: ``(B, 3, H, W)`` in [0, 1] -> ``(B, 1)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        return 50 + 20 * torch.tanh(self.conv(x)).mean(dim=(1, 2, 3)).unsqueeze(1)


@pytest.fixture()
def clean_dir(tmp_path):
    folder = tmp_path / "clean"
    gen = torch.Generator().manual_seed(0)
    save_image(torch.rand(3, 20, 24, generator=gen), folder / "alpha.png")
    save_image(torch.rand(3, 24, 18, generator=gen), folder / "beta.jpg")
    return folder


def test_layout_names_and_scores(clean_dir, tmp_path):
    out = tmp_path / "out"
    metric = ToyMetric()
    summary = make_dataset(clean_dir, out, metric, attacks=ATTACKS, progress=False)
    assert summary.written == 4 and summary.skipped == 0 and summary.references == 2
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [
        "attacked/fgsm/alpha.png",
        "attacked/fgsm/beta.png",
        "attacked/ifgsm/alpha.png",
        "attacked/ifgsm/beta.png",
        "attacks.json",
        "reference/alpha.png",
        "reference/beta.png",
    ]
    assert torch.equal(load_image(out / "reference/alpha.png"), load_image(clean_dir / "alpha.png"))
    ref = load_image(out / "reference/beta.png")
    adv = load_image(out / "attacked/fgsm/beta.png")
    assert adv.shape == ref.shape == (3, 24, 18)
    assert (adv - ref).abs().max() <= 10 / 255 + 1e-6
    assert all(g > 0 for g in summary.mean_gains().values())
    settings = json.loads((out / "attacks.json").read_text())
    assert settings["seed"] == 0 and settings["metric"] == "ToyMetric"
    assert settings["attacks"]["ifgsm"].startswith("IFGSM(eps=0.03922, steps=10")


def test_resume_skips_finished_files_and_redoes_missing_ones(clean_dir, tmp_path):
    out = tmp_path / "out"
    metric = ToyMetric()
    make_dataset(clean_dir, out, metric, attacks=ATTACKS, progress=False)
    done = out / "attacked/ifgsm/beta.png"
    first = done.read_bytes()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    done.unlink()
    summary = make_dataset(clean_dir, out, metric, attacks=ATTACKS, progress=False)
    assert summary.written == 1 and summary.skipped == 3 and summary.references == 0
    assert done.read_bytes() == first  # same job seed -> same pixels as the first run
    for p, stamp in stamps.items():
        if p != done:
            assert p.stat().st_mtime_ns == stamp
    again = make_dataset(clean_dir, out, metric, attacks=ATTACKS, progress=False)
    assert again.written == 0 and again.skipped == 4
    assert not list(out.rglob("*.part"))


def test_settings_conflicts_are_refused(clean_dir, tmp_path):
    out = tmp_path / "out"
    metric = ToyMetric()
    make_dataset(clean_dir, out, metric, attacks=["fgsm"], progress=False)
    with pytest.raises(ValueError, match="seed"):
        make_dataset(clean_dir, out, metric, attacks=["fgsm"], seed=1, progress=False)
    with pytest.raises(ValueError, match="attacked/fgsm"):
        make_dataset(
            clean_dir,
            out,
            metric,
            attacks=["fgsm"],
            overrides={"fgsm": {"eps": 0.01}},
            progress=False,
        )
    make_dataset(clean_dir, out, metric, attacks=["ifgsm"], progress=False)  # adding is fine
    assert set(json.loads((out / "attacks.json").read_text())["attacks"]) == {"fgsm", "ifgsm"}


def test_limit_crop_and_overrides(clean_dir, tmp_path):
    out = tmp_path / "out"
    summary = make_dataset(
        clean_dir,
        out,
        ToyMetric(),
        attacks="ifgsm",
        limit=1,
        crop=16,
        overrides={"ifgsm": {"steps": 2}},
        progress=False,
    )
    assert summary.written == 1
    assert load_image(out / "attacked/ifgsm/alpha.png").shape == (3, 16, 16)
    assert not (out / "reference/beta.png").exists()
    assert "steps=2" in json.loads((out / "attacks.json").read_text())["attacks"]["ifgsm"]


def test_bad_arguments(clean_dir, tmp_path):
    metric = ToyMetric()
    with pytest.raises(ValueError, match="unknown"):
        make_dataset(clean_dir, tmp_path / "o", metric, attacks="fgsm,nope", progress=False)
    with pytest.raises(ValueError, match="limit"):
        make_dataset(clean_dir, tmp_path / "o", metric, attacks="fgsm", limit=0, progress=False)
    with pytest.raises(ValueError, match="crop"):
        make_dataset(clean_dir, tmp_path / "o", metric, attacks="fgsm", crop=0, progress=False)
    save_image(torch.rand(3, 8, 8), clean_dir / "alpha.jpg")
    with pytest.raises(ValueError, match=r"alpha\.png"):
        make_dataset(clean_dir, tmp_path / "o", metric, attacks="fgsm", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        make_dataset(tmp_path / "empty", tmp_path / "o2", metric, attacks="fgsm", progress=False)
    with pytest.raises(ValueError, match="not a folder"):
        make_dataset(tmp_path / "none", tmp_path / "o3", metric, attacks="fgsm", progress=False)


def test_images_in_sub_folders_are_counted_in_a_warning(tmp_path, caplog):
    for rel in ("a.png", "b.png", "sub/c.png", "sub/deeper/d.png"):
        save_image(torch.rand(3, 8, 8), tmp_path / "in" / rel)
    assert [p.name for p in select_images(tmp_path / "in", None)] == ["a.png", "b.png"]
    assert "2 image(s) in sub-folders" in caplog.text


def test_helpers():
    assert parse_attacks(None)[0] == "fgsm" and "uap" in parse_attacks(None)
    assert parse_attacks(" ifgsm, fgsm,ifgsm ") == ["ifgsm", "fgsm"]
    assert name_seed(0, "fgsm/a") == name_seed(0, "fgsm/a") != name_seed(0, "fgsm/b")
    assert name_seed(0, "fgsm/a") == 642700459753930449  # the seed of datasets made before
    image = torch.arange(3 * 5 * 4, dtype=torch.float32).view(3, 5, 4)
    assert torch.equal(centre_crop(image, 2), image[:, 1:3, 1:3])
    assert torch.equal(centre_crop(image, 10), image)


def test_cli_main(clean_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(make_dataset_script, "load_metric", lambda device, ckpt: ToyMetric())
    out = tmp_path / "cli"
    summary = make_dataset_script.main(
        [str(out), "--input", str(clean_dir), "--attacks", "fgsm", "--seed", "3", "--crop", "12"]
    )
    assert summary.written == 2
    assert load_image(out / "attacked/fgsm/beta.png").shape == (3, 12, 12)
    assert json.loads((out / "attacks.json").read_text())["seed"] == 3


def test_missing_uap_weights_are_reported_before_any_work(clean_dir, tmp_path, monkeypatch):
    import attacks.uap

    monkeypatch.setattr(attacks.uap, "WEIGHTS_DIR", tmp_path / "weights")
    metric = ToyMetric()
    metric.name = "toy"
    with pytest.raises(ValueError, match="leave uap out"):
        make_dataset(clean_dir, tmp_path / "out", metric, attacks="fgsm,uap", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("script", ["scripts/make_dataset.py", "scripts/train_uap.py"])
def test_scripts_run_as_files(script):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, script, "--help"], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "usage:" in done.stdout


def test_an_output_path_that_is_a_file_is_a_message(clean_dir, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    argv = [str(blocker), "--input", str(clean_dir), "--attacks", "fgsm", "--device", "cpu"]
    done = subprocess.run(
        [sys.executable, "scripts/make_dataset.py", *argv],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith(f"make_dataset.py: error: [Errno 17] File exists: '{blocker}")
    )
