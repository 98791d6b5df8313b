"""scripts/tune.py and evaluation/tuning.py: search space, objective, budget, tuning set, the
defaults file it writes (always into tmp paths, never purifier/defaults.json)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_bench import ATTACKS, NAMES, ToyMetric, tiny_linearity, write_tiny_dataset

import purifier.config
from attacks import ATTACKS as ATTACK_REGISTRY
from common.image_io import save_image
from common.paths import ROOT
from evaluation import harness, tune_cli
from evaluation.tuning import (
    DEFAULT_SPACE,
    TUNING_ATTACKS,
    TUNING_IMAGES,
    Trial,
    Tuner,
    build_tuning_set,
    check_not_public,
    choose,
    grid_candidates,
    hand_set_knobs,
    mean_figures,
    normalise,
    pareto_front,
    parse_space,
    provenance_path,
    write_defaults,
)
from purifier import PROVISIONAL_DEFAULTS, PurifierConfig, load_default_config
from purifier.config import DEFAULTS_FILE
from tests.conftest import write_tiny_standin

REAL_DEFAULTS = purifier.config.DEFAULTS_FILE


@pytest.fixture(autouse=True)
def real_defaults_untouched(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """No test reads or writes the repository's purifier/defaults.json."""
    before = REAL_DEFAULTS.read_bytes() if REAL_DEFAULTS.is_file() else None
    monkeypatch.setattr(purifier.config, "DEFAULTS_FILE", tmp_path / "absent.json")
    yield
    after = REAL_DEFAULTS.read_bytes() if REAL_DEFAULTS.is_file() else None
    assert after == before


# --- search space ---------------------------------------------------------------------------


def test_parse_space() -> None:
    space = parse_space('{"steps": [1, 2], "t_star": [10]}')
    assert space == {"t_star": (10,), "steps": (1, 2)}  # knob order of PurifierConfig
    assert parse_space(DEFAULT_SPACE) == DEFAULT_SPACE


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{nope", "not valid JSON"),
        ("[1]", "non-empty object"),
        ("{}", "non-empty object"),
        ('{"t_sta": [1]}', "unknown knob 't_sta'"),
        ('{"steps": []}', "must list values for steps"),
        ('{"steps": 2}', "must list values for steps"),
    ],
)
def test_parse_space_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_space(text)


def test_normalise_snaps_ddim_and_drops_impossible_chains() -> None:
    ddim = normalise(PROVISIONAL_DEFAULTS, sampler="ddim", spacing="quadratic")
    assert ddim is not None and (ddim.t_star, ddim.steps, ddim.spacing) == (49, 2, "uniform")
    assert normalise(PROVISIONAL_DEFAULTS, t_star=2, steps=4) is None
    assert normalise(PROVISIONAL_DEFAULTS, ensemble=0) is None
    assert normalise(PROVISIONAL_DEFAULTS) == PROVISIONAL_DEFAULTS


def test_grid_candidates_unique_and_cheapest_first() -> None:
    space = {"t_star": (19, 20), "steps": (2, 1), "sampler": ("ddpm", "ddim")}
    configs = grid_candidates(space, PROVISIONAL_DEFAULTS)
    assert len(configs) == len(set(configs)) == 6  # ddim snaps 20 -> 19 (both step counts)
    assert [c.steps for c in configs] == [1, 1, 1, 2, 2, 2]


# --- objective ------------------------------------------------------------------------------


def _trial(t_star: int, gain: float, quality: float, clean: float, ratio: float, **kw) -> Trial:
    return Trial(
        PurifierConfig(t_star=t_star, steps=1),
        gain=gain,
        quality=quality,
        srcc=0.99,
        clean_gain=clean,
        clean_quality=0.9,
        time_ratio=ratio,
        **kw,
    )


def test_choose_minimises_gain_plus_clean_gain_under_budget_and_quality_floor() -> None:
    trials = [
        _trial(10, gain=1.0, quality=0.90, clean=0.5, ratio=0.9),  # objective 1.5
        _trial(20, gain=0.5, quality=0.90, clean=0.5, ratio=1.1),  # over budget
        _trial(30, gain=0.2, quality=0.70, clean=0.1, ratio=0.5),  # below the quality floor
        _trial(40, gain=1.2, quality=0.95, clean=0.3, ratio=0.3),  # tie at 1.5, higher quality
        Trial(PurifierConfig(t_star=50, steps=1), skipped=True, estimated_ratio=9.0),
    ]
    best, met = choose(trials, budget=1.0, min_quality=0.8)
    assert best.config.t_star == 40 and met
    # nobody reaches 0.99: objective + 100 x shortfall = 10.5 (t*=10), 29.3 (30), 5.5 (40)
    best, met = choose(trials, budget=1.0, min_quality=0.99)
    assert best.config.t_star == 40 and not met
    sharp = _trial(60, gain=1.0, quality=0.80, clean=0.0, ratio=0.5)
    smooth = _trial(70, gain=5.0, quality=0.90, clean=0.0, ratio=0.5)
    smoother = _trial(80, gain=12.0, quality=0.90, clean=0.0, ratio=0.5)
    assert choose([sharp, smooth], 1.0, 0.95)[0] is smooth  # 1 + 15 > 5 + 5
    assert choose([sharp, smoother], 1.0, 0.95)[0] is sharp  # 1 + 15 < 12 + 5
    with pytest.raises(ValueError, match="no configuration ran within the budget of 0.1"):
        choose(trials, budget=0.1, min_quality=0.0)
    assert trials[0].objective == 1.5
    assert math.isnan(trials[-1].objective)


def test_pareto_front() -> None:
    trials = [
        _trial(10, gain=1.0, quality=0.9, clean=0, ratio=1),
        _trial(20, gain=2.0, quality=0.95, clean=0, ratio=1),
        _trial(30, gain=2.5, quality=0.93, clean=0, ratio=1),  # dominated by t*=20
        _trial(40, gain=0.5, quality=0.8, clean=0, ratio=1),
    ]
    assert [t.config.t_star for t in pareto_front(trials)] == [40, 10, 20]


# --- budget ---------------------------------------------------------------------------------


class SleepyDefense:
    """Takes ``steps x UNIT`` seconds per call; output depends on t_star."""

    UNIT = 0.02

    def __init__(self, config: PurifierConfig) -> None:
        self.config = config

    def apply_defense(self, images: torch.Tensor) -> torch.Tensor:
        time.sleep(self.UNIT * self.config.steps * images.shape[0])
        return (images * (1 - self.config.t_star / 1000)).clamp(0, 1)


def test_tuner_respects_the_budget_and_skips_configs_estimated_over_it(tmp_path: Path) -> None:
    pairs = harness.collect_pairs(write_tiny_dataset(tmp_path / "d"))
    linearity = {(32, 32): SleepyDefense.UNIT}  # so time ratio ~ steps
    tuner = Tuner(pairs, ToyMetric(), linearity, SleepyDefense, budget=2.5, progress=False)
    tuner.coordinate_search(
        PurifierConfig(t_star=10, steps=1), {"steps": (1, 2, 3, 4)}, min_quality=0.0, rounds=1
    )
    by_steps = {c.steps: t for c, t in tuner.trials.items()}
    assert sorted(by_steps) == [1, 2, 3, 4]
    assert by_steps[4].skipped and by_steps[4].estimated_ratio > 3.75
    assert math.isnan(by_steps[4].gain)
    assert not by_steps[3].skipped and by_steps[3].time_ratio > 2.5
    best = tuner.best(0.0)
    assert best is not None and best.time_ratio <= 2.5 and best.config.steps in (1, 2)
    # Figures come from the harness: the defense darkens by t*/1000, Quality < 1.
    assert 0 < by_steps[1].quality < 1 and by_steps[1].gain > 0
    tuner.close()


def test_unrunnable_values_are_named_not_dropped_silently(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pairs = harness.collect_pairs(write_tiny_dataset(tmp_path / "d"))
    linearity = {(32, 32): SleepyDefense.UNIT}
    tuner = Tuner(pairs, ToyMetric(), linearity, SleepyDefense, budget=9, progress=False)
    start = PurifierConfig(t_star=10, steps=1)
    with caplog.at_level("WARNING"):
        tuner.coordinate_search(start, {"steps": (1, 50)}, min_quality=0.0, rounds=1)
    assert [c.steps for c in tuner.trials] == [1]  # steps 50 > t_star 10 + 1: not runnable
    assert "steps=50 is not runnable around" in caplog.text
    with pytest.raises(ValueError, match="no combination of the search space .* is runnable"):
        tuner.grid_search({"steps": (50, 60)}, start)
    tuner.close()


class BrightMetric(torch.nn.Module):
    """Scores 100 x mean brightness: a second toy metric with another taste."""

    name = "bright"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 100 * x.mean(dim=(1, 2, 3)).unsqueeze(1)


def test_tuner_averages_the_figures_of_its_panels(tmp_path: Path) -> None:
    pairs = harness.collect_pairs(write_tiny_dataset(tmp_path / "d"))
    linearity = {(32, 32): SleepyDefense.UNIT}
    config = PurifierConfig(t_star=100, steps=1)
    alone = {}
    for metric in (ToyMetric(), BrightMetric()):
        tuner = Tuner(pairs, metric, linearity, SleepyDefense, budget=9, progress=False)
        alone[metric.name] = tuner.trial(config)
        assert alone[metric.name].panels == {}  # one panel: nothing extra recorded
    both = Tuner(
        pairs, ToyMetric(), linearity, SleepyDefense, budget=9, extra=[(pairs, BrightMetric())],
        progress=False,
    ).trial(config)  # fmt: skip
    assert list(both.panels) == ["0:toy", "1:bright"]
    for key in ("gain", "quality", "clean_gain"):
        want = (getattr(alone["toy"], key) + getattr(alone["bright"], key)) / 2
        assert getattr(both, key) == pytest.approx(want)
        assert both.panels["1:bright"][key] == pytest.approx(getattr(alone["bright"], key))
    # darkening by 10 % lowers the brightness score by exactly 10 % on every image
    assert alone["bright"].clean_gain == pytest.approx(10.0)
    assert both.objective == pytest.approx(both.gain + both.clean_gain)


def test_mean_figures() -> None:
    assert mean_figures({"a": {"gain": 1.0, "q": 0.5}, "b": {"gain": 3.0, "q": 0.7}}) == {
        "gain": 2.0,
        "q": pytest.approx(0.6),
    }
    with pytest.raises(ValueError, match="no panel"):
        mean_figures({})


def test_tuner_rejects_a_bad_budget(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="budget must be > 0"):
        Tuner([], ToyMetric(), {}, SleepyDefense, budget=0, progress=False)


# --- tuning set -----------------------------------------------------------------------------


def test_build_tuning_set_from_chosen_images(tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    gen = torch.Generator().manual_seed(0)
    for name in ("p.png", "q.png", "unused.png"):
        save_image(torch.rand(3, 36, 40, generator=gen), clean / name)
    out = build_tuning_set(
        clean,
        tmp_path / "tuning",
        ToyMetric(),
        images=["p.png", "q.png"],
        attacks=["fgsm", "ifgsm"],
        crop=32,
        progress=False,
    )
    pairs = harness.collect_pairs(out)
    assert sorted((p.attack, p.attacked.name) for p in pairs) == [
        (a, n) for a in ("fgsm", "ifgsm") for n in ("p.png", "q.png")
    ]
    settings = json.loads((out / "attacks.json").read_text())
    assert settings["crop"] == 32 and sorted(settings["attacks"]) == ["fgsm", "ifgsm"]
    check_not_public(pairs, clean.parent / "nothing-here")  # no public folder: fine
    public = tmp_path / "eval"
    save_image(torch.rand(3, 8, 8, generator=gen), public / "q.jpg")
    with pytest.raises(ValueError, match=r"public-benchmark images \['q'\]"):
        check_not_public(pairs, public)
    with pytest.raises(ValueError, match="does not exist"):
        build_tuning_set(clean, tmp_path / "t2", ToyMetric(), images=["nope.png"], progress=False)


def test_default_tuning_images_are_train_photos() -> None:
    assert len(TUNING_IMAGES) == 12 == len(set(TUNING_IMAGES))
    assert all(n.startswith(("bsds_", "sunhays_")) for n in TUNING_IMAGES)
    assert set(TUNING_ATTACKS) <= set(ATTACK_REGISTRY) and "uap" not in TUNING_ATTACKS


# --- defaults file --------------------------------------------------------------------------


def test_write_defaults_round_trips(tmp_path: Path) -> None:
    config = PurifierConfig(t_star=39, steps=2, sampler="ddim", unsharp_amount=0.5)
    path, record = write_defaults(config, tmp_path / "p" / "defaults.json", {"x": math.nan})
    assert record == provenance_path(path) == tmp_path / "p" / "defaults.provenance.json"
    assert json.loads(path.read_text()) == config.to_dict()
    assert load_default_config(path) == config
    assert json.loads(record.read_text()) == {"x": None}


# --- command line ---------------------------------------------------------------------------


@pytest.fixture()
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_weights: Path) -> dict:
    monkeypatch.setattr(harness, "load_metric", lambda checkpoint_dir, device: ToyMetric())
    monkeypatch.setattr(tune_cli, "reference_model", tiny_linearity)
    data = write_tiny_dataset(tmp_path / "tuning")
    argv = [
        "--tuning-dir", str(data),
        "--no-build",
        "--data", str(tmp_path / "no-data"),
        "--weights", str(tiny_weights),
        "--space", '{"t_star": [5, 10], "steps": [1, 2]}',
        "--start", '{"t_star": 10, "steps": 1}',
        "--output", str(tmp_path / "out" / "defaults.json"),
        "--output-dir", str(tmp_path / "run"),
        "--linearity-repeats", "1",
        "--no-progress",
    ]  # fmt: skip
    return {"argv": argv, "tmp": tmp_path}


def test_cli_writes_a_valid_defaults_file(cli_env: dict) -> None:
    tmp = cli_env["tmp"]
    assert tune_cli.main([*cli_env["argv"], "--budget", "1e6", "--no-plot"]) == 0
    output = tmp / "out" / "defaults.json"
    chosen = load_default_config(output)
    assert (chosen.t_star, chosen.steps) in {(5, 1), (5, 2), (10, 1), (10, 2)}
    record = json.loads((tmp / "out" / "defaults.provenance.json").read_text())
    assert record["defaults"] == chosen.to_dict()
    assert record["figures"]["config"] == chosen.to_dict()
    assert record["figures"]["time_ratio"] <= 1e6
    assert record["tuning_set"]["attacks"] == list(ATTACKS)
    assert record["tuning_set"]["references"] == list(NAMES)
    assert set(record["baselines"]) == {"none", "resize", "jpeg", "blur", "median"}
    assert record["quality_floor"] == record["baselines"]["none"]["quality"]
    assert record["command"].startswith("python scripts/tune.py --tuning-dir")
    trials = json.loads((tmp / "run" / "trials.json").read_text())
    assert record["search"]["method"] == "coordinate"
    assert record["search"]["trials_run"] == len(trials) in (3, 4)  # path-dependent
    good = [t for t in trials if t["quality"] >= record["quality_floor"]]
    best = min(good or trials, key=lambda t: (t["objective"], -t["quality"], t["time_ratio"]))
    assert best["config"] == chosen.to_dict()
    assert record["quality_floor_met"] == bool(good)


def test_cli_also_scores_a_second_panel(cli_env: dict) -> None:
    tmp = cli_env["tmp"]
    metric = write_tiny_standin(tmp / "standin-other", bias=40.0)
    other = write_tiny_dataset(tmp / "tuning-other")
    for attack in ATTACKS[1:]:
        shutil.rmtree(other / "attacked" / attack)
    argv = [*cli_env["argv"], "--budget", "1e6", "--no-plot"]
    argv += ["--also", str(metric), str(other), "--max-trials", "2"]
    assert tune_cli.main(argv) == 0
    trials = json.loads((tmp / "run" / "trials.json").read_text())
    assert len(trials) == 2
    for trial in trials:
        assert list(trial["panels"]) == ["0:toy", "1:standin-other"]
        gains = [panel["gain"] for panel in trial["panels"].values()]
        assert trial["gain"] == pytest.approx(sum(gains) / 2)
    record = json.loads((tmp / "out" / "defaults.provenance.json").read_text())
    first, second = record["panels"]
    assert first == {"metric": "0:toy", **record["tuning_set"]}
    assert second["metric"] == "1:standin-other"
    assert second["dir"] == str(other)
    assert second["attacks"] == list(ATTACKS[:1])
    assert second["references"] == list(NAMES)
    assert second["pairs"] == len(NAMES)


def test_cli_rejects_a_missing_panel_metric(cli_env: dict) -> None:
    argv = [*cli_env["argv"], "--also", "/nonexistent/metric", str(cli_env["tmp"] / "tuning")]
    with pytest.raises(SystemExit, match="no metric at"):
        tune_cli.main(argv)


def test_cli_grid_search_dry_run_and_pareto_plot(cli_env: dict) -> None:
    pytest.importorskip("matplotlib")
    tmp = cli_env["tmp"]
    argv = [*cli_env["argv"], "--budget", "1e6", "--search", "grid", "--dry-run"]
    assert tune_cli.main(argv) == 0
    assert not (tmp / "out").exists()
    assert (tmp / "run" / "pareto.png").stat().st_size > 1000
    assert len(json.loads((tmp / "run" / "trials.json").read_text())) == 4


def test_cli_fails_when_nothing_fits_the_budget(cli_env: dict) -> None:
    argv = [*cli_env["argv"], "--budget", "1e-9", "--no-plot"]
    with pytest.raises(SystemExit, match="no configuration ran within the budget"):
        tune_cli.main(argv)
    assert not (cli_env["tmp"] / "out").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--space", '{"t_stat": [1]}'], "unknown knob"),
        (["--start", '{"steps": 0}'], "steps"),
        (["--start", "[1]"], "--start must be a JSON object of knobs"),
        (["--start", "{steps"], "--start is not valid JSON"),
        (["--rounds", "0"], "--rounds"),
        (["--budget", "0"], "--budget must be > 0"),
        (["--weights", "/nonexistent/ddpm"], "does not exist"),
    ],
)
def test_cli_rejects_bad_arguments(cli_env: dict, extra: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        tune_cli.main([*cli_env["argv"], *extra])


@pytest.mark.parametrize("extra", [["--max-trials", "0"], ["--threads", "0"], ["--device", "foo"]])
def test_cli_usage_errors_name_the_option(
    cli_env: dict, extra: list[str], capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as info:
        tune_cli.main([*cli_env["argv"], *extra])
    assert info.value.code == 2 and f"argument {extra[0]}" in capsys.readouterr().err


def test_cli_keeps_hand_set_knobs_unless_forced(cli_env: dict) -> None:
    out = cli_env["tmp"] / "out"
    out.mkdir()
    (out / "defaults.json").write_text('{"t_star": 10, "steps": 1}\n')
    record = {"manual_override": {"knobs": {"t_star": {"tuner_choice": 5, "shipped": 10}}}}
    (out / "defaults.provenance.json").write_text(json.dumps(record))
    argv = [*cli_env["argv"], "--budget", "1e6", "--no-plot"]
    with pytest.raises(SystemExit, match=r"set by hand .*t_star=10 \(tuner: 5\).*--force"):
        tune_cli.main(argv)
    assert (out / "defaults.json").read_text() == '{"t_star": 10, "steps": 1}\n'
    assert tune_cli.main([*argv, "--dry-run"]) == 0
    assert tune_cli.main([*argv, "--force"]) == 0
    assert "manual_override" not in json.loads((out / "defaults.provenance.json").read_text())


@pytest.mark.parametrize(
    "text, message",
    [
        ("{broken", "cannot read the tuning record"),
        ("[1]", "is not a JSON object"),
        ('{"manual_override": 3}', "'manual_override' must be an object"),
    ],
)
def test_an_unreadable_record_is_refused_not_taken_for_no_hand_set_knobs(
    tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "defaults.provenance.json").write_text(text)
    with pytest.raises(ValueError, match=message):
        hand_set_knobs(tmp_path / "defaults.json")
    assert hand_set_knobs(tmp_path / "missing" / "defaults.json") is None
    (tmp_path / "defaults.provenance.json").write_text('{"search": {}}')
    assert hand_set_knobs(tmp_path / "defaults.json") is None


def test_the_shipped_defaults_are_guarded() -> None:
    assert hand_set_knobs(DEFAULTS_FILE) is not None


def test_script_runs_as_a_file() -> None:
    done = subprocess.run(
        [sys.executable, "scripts/tune.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "--budget" in done.stdout
