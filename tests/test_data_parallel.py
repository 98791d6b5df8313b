"""data_parallel.py, and purify / make_dataset split over several processes.

The fast tests run each shard in turn in this process (a stand-in process state); the slow
ones start two real processes with ``accelerate launch`` and compare every output file with a
single-process run.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from attacks import dataset as make_dataset_script
from attacks.dataset import DatasetSummary, cropped_pixels
from common.data_parallel import (
    assign_shards,
    gather_objects,
    launched_without_gpus,
    process_device,
    process_group,
    take_shard,
)
from common.image_io import save_image
from metrics.linearity import IQAModel, TrunkSpec
from metrics.standin import save_standin
from purifier import cli as purify_script
from purifier.folder_plan import Job, pixel_counts

ROOT = Path(__file__).resolve().parent.parent
PURIFY_OPTIONS = ["--t-star", "10", "--steps", "2", "--seed", "0", "--threads", "1"]
DATASET_OPTIONS = ["--attacks", "fgsm,ifgsm", "--seed", "3", "--crop", "32"]


# --- sharding --------------------------------------------------------------------------------


def test_equal_costs_give_round_robin() -> None:
    assert assign_shards([1] * 7, 3) == [0, 1, 2, 0, 1, 2, 0]
    assert take_shard(list("abcdefg"), 1, 3) == ["b", "e"]
    assert take_shard(list("abc"), 0, 1) == ["a", "b", "c"]
    assert take_shard([], 0, 2) == []


def test_costs_are_balanced_greedily_pinned() -> None:
    # largest first: 9 -> 0, 7 -> 1, 5 -> 1 (7 < 9), 3 -> 0 (9 < 12), 1 -> 0 (a tie)
    assert assign_shards([1, 9, 3, 7, 5], 2) == [0, 0, 0, 1, 1]
    assert take_shard(list("abcde"), 0, 2, [1, 9, 3, 7, 5]) == ["a", "b", "c"]  # order kept


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8])
def test_shards_are_disjoint_covering_deterministic_and_balanced(count: int) -> None:
    gen = torch.Generator().manual_seed(count)
    costs = (torch.randint(1, 100, (23,), generator=gen) ** 2).tolist()
    items = [f"img{i:02d}" for i in range(len(costs))]
    shards = [take_shard(items, i, count, costs) for i in range(count)]
    assert sorted(x for shard in shards for x in shard) == items
    assert sum(len(shard) for shard in shards) == len(items)
    assert shards == [take_shard(items, i, count, list(costs)) for i in range(count)]
    loads = [sum(costs[items.index(x)] for x in shard) for shard in shards]
    # greedy longest-first: no shard exceeds the lightest by more than the largest item
    assert max(loads) - min(loads) <= max(costs)


@pytest.mark.parametrize(
    ("costs", "index", "count", "match"),
    [
        ([1, 2], 0, 0, "count"),
        ([1, 2], 0, -1, "count"),
        ([1, 2], 0, 1.5, "count"),
        ([1, 2], 0, True, "count"),
        ([1, 2], 2, 2, "index"),
        ([1, 2], -1, 2, "index"),
        ([1, 2], "0", 2, "index"),
        ([1, -2], 0, 2, "costs"),
        ([1, float("nan")], 0, 2, "costs"),
        ([1, float("inf")], 0, 2, "costs"),
        ([1], 0, 2, "1 costs for 2 items"),
    ],
)
def test_bad_shard_arguments(costs: list[float], index, count, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        take_shard(["a", "b"], index, count, costs)


def test_pixel_costs_of_files(tmp_path: Path) -> None:
    save_image(torch.rand(3, 20, 30), tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    jobs = [Job(tmp_path / n, tmp_path / "out" / n, n) for n in ("a.png", "bad.png")]
    assert pixel_counts(jobs) == [600, 0]
    assert cropped_pixels(tmp_path / "a.png", None) == 600
    assert cropped_pixels(tmp_path / "a.png", 25) == 20 * 25
    assert cropped_pixels(tmp_path / "bad.png", 25) == 0


# --- process state ---------------------------------------------------------------------------


@dataclass
class StandInState:
    """Process ``process_index`` of ``num_processes``, all run in turn in this process."""

    process_index: int
    num_processes: int
    device: torch.device = torch.device("cpu")

    @property
    def is_main_process(self) -> bool:
        return self.process_index == 0

    def wait_for_everyone(self) -> None:
        pass


def test_single_process_state_and_gather() -> None:
    with process_group("cpu") as state:
        assert state.num_processes == 1 and state.is_main_process
        assert gather_objects(state, {"done": 3}) == [{"done": 3}]
        assert process_device(state, "cpu") == torch.device("cpu")


def test_process_device() -> None:
    gpus = StandInState(3, 4, torch.device("cuda", 3))
    assert process_device(gpus, "cuda") == torch.device("cuda", 3)
    assert process_device(gpus, "cuda:1") == torch.device("cuda", 1)  # an explicit index wins
    assert process_device(gpus, "cpu") == torch.device("cpu")
    cpus = StandInState(1, 2, torch.device("cpu", 0))  # accelerate's MULTI_CPU device
    assert process_device(cpus, "cpu") == torch.device("cpu")
    assert process_device(StandInState(0, 1, torch.device("cuda", 0)), "cuda") == torch.device(
        "cuda"
    )


def test_launched_without_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not launched_without_gpus()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launched_without_gpus()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert not launched_without_gpus()


def test_dataset_summaries_merge() -> None:
    parts = [
        DatasetSummary(written=2, skipped=1, references=1, gains={"fgsm": [1.0], "ifgsm": []}),
        DatasetSummary(written=3, skipped=0, references=2, gains={"fgsm": [2.0, 3.0]}),
    ]
    total = DatasetSummary.merged(parts)
    assert (total.written, total.skipped, total.references) == (5, 1, 3)
    assert total.gains == {"fgsm": [1.0, 2.0, 3.0], "ifgsm": []}
    assert total.mean_gains() == {"fgsm": 2.0}


# --- the scripts, shard by shard in this process ----------------------------------------------


@pytest.fixture(scope="module")
def photo_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 images of 24-40 px (mixed sizes and formats, a sub-folder) and a corrupt file."""
    root = tmp_path_factory.mktemp("photos")
    gen = torch.Generator().manual_seed(0)
    sizes = {"a.png": (24, 24), "b.jpg": (32, 40), "sub/c.png": (40, 28), "d.png": (24, 24)}
    sizes["sub/e.bmp"] = (36, 36)
    for name, (height, width) in sizes.items():
        save_image(torch.rand(3, height, width, generator=gen), root / name)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return root


@pytest.fixture(scope="module")
def clean_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clean")
    gen = torch.Generator().manual_seed(1)
    for name, (height, width) in {"a.png": (24, 32), "b.jpg": (40, 36), "c.png": (28, 28)}.items():
        save_image(torch.rand(3, height, width, generator=gen), root / name)
    return root


@pytest.fixture(scope="module")
def tiny_metric(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in metric folder with a tiny random trunk (``--metric-checkpoint``)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = IQAModel(TrunkSpec((1, 1, 1, 1), groups=2, width_per_group=16, stem_width=8))
    folder = tmp_path_factory.mktemp("metric") / "tiny-metric"
    return save_standin(model, [1.0, 1.0, 1.0], [50.0, 50.0, 50.0], folder, name="tiny-metric")


def files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def union(*folders: Path) -> dict[str, bytes]:
    merged: dict[str, bytes] = {}
    for folder in folders:
        part = files(folder)
        assert not set(part) & set(merged), "shards overlap"
        merged.update(part)
    return merged


def as_process(monkeypatch: pytest.MonkeyPatch, module, index: int, count: int) -> None:
    @contextlib.contextmanager
    def fake_group(device: str):
        yield StandInState(index, count)

    monkeypatch.setattr(module, "process_group", fake_group)


def test_purify_shards_write_what_one_process_writes(
    photo_tree: Path, tiny_weights: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    options = ["--weights", str(tiny_weights), *PURIFY_OPTIONS]
    assert purify_script.main([str(photo_tree), str(tmp_path / "one"), *options]) == 1
    # Each shard into its own folder: run one after the other, a shard would otherwise take
    # the other's outputs for finished work (a real launch plans before anyone writes).
    codes = []
    for index in range(2):
        as_process(monkeypatch, purify_script, index, 2)
        out = tmp_path / f"shard{index}"
        codes.append(purify_script.main([str(photo_tree), str(out), *options, "--batch-size", "2"]))
    assert files(tmp_path / "one") == union(tmp_path / "shard0", tmp_path / "shard1")
    assert len(files(tmp_path / "one")) == 5
    # by pixels, largest first: e 1296 -> 0, b 1280 -> 1, c 1120 -> 1, a 576 -> 0, d 576 -> 0,
    # broken.png 0 -> 1 (loads 2448 | 2400)
    assert sorted(files(tmp_path / "shard0")) == ["a.png", "d.png", "sub/e.png"]
    assert codes == [0, 1]  # the stand-in processes do not pool their failures
    assert capsys.readouterr().out.count("with 2 processes") == 1  # main process only


def test_make_dataset_shards_write_what_one_process_writes(
    clean_folder: Path, tiny_metric: Path, tmp_path: Path, monkeypatch
) -> None:
    options = ["--input", str(clean_folder), "--metric-checkpoint", str(tiny_metric)]
    options += DATASET_OPTIONS
    one = make_dataset_script.main([str(tmp_path / "one"), *options])
    assert one.written == 6 and one.references == 3
    for index in range(2):
        as_process(monkeypatch, make_dataset_script, index, 2)
        make_dataset_script.main([str(tmp_path / f"shard{index}"), *options])
    assert not (tmp_path / "shard1" / "attacks.json").exists()  # only the main process records
    assert files(tmp_path / "one") == union(tmp_path / "shard0", tmp_path / "shard1")


# --- real launches -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(script: str, *args: str, processes: int = 2) -> subprocess.CompletedProcess:
    """``accelerate launch`` ``processes`` copies of ``script`` on CPU, one thread each.

    ``--multi_gpu`` is accelerate's torchrun launcher (``--cpu`` alone starts one process
    without an MPI host file); the scripts join a CPU (gloo) group for ``--device cpu``."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    command += ["--num_processes", str(processes), "--num_machines", "1"]
    command += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["--main_process_port", str(free_port()), script, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_purify_launched_on_two_processes_matches_one_process(
    photo_tree: Path, tiny_weights: Path, tmp_path: Path
) -> None:
    options = ["--weights", str(tiny_weights), *PURIFY_OPTIONS]
    assert purify_script.main([str(photo_tree), str(tmp_path / "one"), *options]) == 1
    done = launch("scripts/purify.py", str(photo_tree), str(tmp_path / "two"), *options)
    assert done.returncode == 1, done.stderr  # broken.png failed, in every process
    assert done.stdout.count("processed 5, skipped 0 (output exists), failed 1") == 1
    assert "with 2 processes" in done.stdout
    assert files(tmp_path / "two") == files(tmp_path / "one")
    assert not list((tmp_path / "two").rglob(".*"))  # no temp files left


@pytest.mark.slow
def test_make_dataset_launched_on_two_processes_matches_one_process(
    clean_folder: Path, tiny_metric: Path, tmp_path: Path
) -> None:
    options = ["--input", str(clean_folder), "--metric-checkpoint", str(tiny_metric)]
    options += DATASET_OPTIONS
    make_dataset_script.main([str(tmp_path / "one"), *options])
    done = launch("scripts/make_dataset.py", str(tmp_path / "two"), *options)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("wrote 6 attacked images and 3 references") == 1
    assert files(tmp_path / "two") == files(tmp_path / "one")


# --- training scripts on two processes ------------------------------------------------------------


def write_photos(folder: Path, count: int, size: int, seed: int) -> list[str]:
    gen = torch.Generator().manual_seed(seed)
    names = [f"img{i:02d}.png" for i in range(count)]
    for name in names:
        save_image(torch.rand(3, size, size, generator=gen), folder / name)
    return names


@pytest.mark.slow
def test_train_ddpm_runs_on_two_processes(tmp_path: Path) -> None:
    write_photos(tmp_path / "train", 8, 40, seed=0)
    output = tmp_path / "ddpm-tiny"
    done = launch(
        "scripts/train_ddpm.py",
        *["--output", str(output), "--run-dir", str(tmp_path / "run")],
        *["--train-dir", str(tmp_path / "train"), "--holdout", "2", "--val-crop", "32"],
        *["--crop", "16", "--batch-size", "2", "--max-steps", "3", "--checkpoint-every", "2"],
        *["--warmup-steps", "1", "--log-every", "1", "--threads", "1"],
        *["--unshuffle", "2", "--channels", "8", "16", "--norm-groups", "4"],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('"steps": 3') == 1  # one summary, from the main process
    assert {p.name for p in output.iterdir()} >= {"config.json", "manifest.json"}
    log = (tmp_path / "run" / "train_log.txt").read_text()
    assert log.count("final validation") == 1


@pytest.mark.slow
def test_train_metric_runs_on_two_processes(tmp_path: Path) -> None:
    clive = tmp_path / "data" / "clive"
    names = write_photos(clive / "images", 12, 40, seed=1)
    rows = [f"{name},{40 + 3 * i},5.0,train" for i, name in enumerate(names)]
    (clive / "mos.csv").write_text("image,mos,mos_std,split\n" + "\n".join(rows) + "\n")
    output = tmp_path / "metric-tiny"
    done = launch(
        "scripts/train_metric.py",
        *["--data", str(tmp_path / "data"), "--output", str(output)],
        *["--run-dir", str(tmp_path / "run"), "--epochs", "1", "--reserve-minutes", "0"],
        *["--blocks", "1", "1", "1", "1", "--groups", "2", "--width-per-group", "16"],
        *["--stem-width", "8", "--crop", "32", "--batch-size", "2", "--val-fraction", "0.25"],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (output / "manifest.json").is_file()
    log = (tmp_path / "run" / "train_metric.log").read_text()
    assert log.count("wrote ") == 1 and log.count("epoch 1 step 2 ") == 1  # 9 fit // (2 x 2)
