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
    PANEL_IMAGES,
    TUNING_ATTACKS,
    TUNING_IMAGES,
    Trial,
    Tuner,
    baseline_margins,
    build_tuning_set,
    check_not_public,
    choose,
    competition_score,
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


BASE = {"gain": 10.0, "quality": 0.60, "srcc": 0.80}


def _scored(t_star: int, ratio: float, *panels: tuple[float, float, float]) -> Trial:
    """A trial whose panels measured (gain, quality, srcc), with margins over ``BASE``."""
    keys = ("gain", "quality", "srcc")
    figures = {f"{i}:m": dict(zip(keys, p, strict=True)) for i, p in enumerate(panels)}
    return Trial(
        PurifierConfig(t_star=t_star, steps=1),
        gain=panels[0][0],
        quality=panels[0][1],
        srcc=panels[0][2],
        time_ratio=ratio,
        margins={name: baseline_margins(f, BASE) for name, f in figures.items()},
    )


def test_baseline_margins_are_normalised_by_the_targets() -> None:
    # half the baseline's Gain, +0.03 Quality, +0.05 SRCC: every target met exactly
    met = baseline_margins({"gain": 5.0, "quality": 0.63, "srcc": 0.85}, BASE)
    assert met == pytest.approx({"gain": 1.0, "quality": 1.0, "srcc": 1.0})
    tie = baseline_margins(BASE, BASE)
    assert tie == {"gain": 0.0, "quality": 0.0, "srcc": 0.0}
    worse = baseline_margins({"gain": 12.0, "quality": 0.57, "srcc": 0.70}, BASE)
    assert worse == pytest.approx({"gain": -0.4, "quality": -1.0, "srcc": -2.0})
    with pytest.raises(ValueError, match="Gain must be > 0"):
        baseline_margins(BASE, {**BASE, "gain": 0.0})
    assert competition_score({"0:a": met, "1:b": worse}) == pytest.approx(-2.0)
    assert competition_score({"0:a": met}) == pytest.approx(1.0)
    assert math.isnan(competition_score({}))
    assert math.isnan(competition_score({"0:a": {**met, "srcc": math.nan}}))


def test_choose_maximises_the_weakest_margin_under_the_budget() -> None:
    trials = [
        _scored(10, 0.9, (5.0, 0.63, 0.85)),  # every margin 1
        _scored(20, 1.1, (1.0, 0.70, 0.95)),  # better everywhere, over budget
        _scored(30, 0.5, (0.5, 0.80, 0.79)),  # wins Gain and Quality by far, loses SRCC
        _scored(40, 0.3, (5.0, 0.63, 0.85), (9.0, 0.61, 0.81)),  # a second judge barely
        Trial(PurifierConfig(t_star=50, steps=1), skipped=True, estimated_ratio=9.0),
    ]
    best, wins = choose(trials, budget=1.0)
    assert best.config.t_star == 10 and wins
    assert trials[2].objective == pytest.approx(-0.2) and trials[3].objective == pytest.approx(0.2)
    best, wins = choose(trials[2:], budget=1.0)
    assert best.config.t_star == 40 and wins  # +0.2 under its weaker judge beats -0.2
    assert choose(trials[2:3], budget=1.0) == (trials[2], False)
    # ties on the weakest margin go to the higher mean margin, then the faster
    slow, fast = _scored(60, 0.8, (5.0, 0.63, 0.85)), _scored(70, 0.2, (5.0, 0.63, 0.85))
    sharper = _scored(80, 0.9, (5.0, 0.66, 0.85))
    assert choose([slow, fast], 1.0)[0] is fast
    assert choose([slow, fast, sharper], 1.0)[0] is sharper
    with pytest.raises(ValueError, match="no configuration ran within the budget of 0.1"):
        choose(trials, budget=0.1)
    assert math.isnan(trials[-1].objective) and math.isnan(_trial(1, 1, 1, 1, 1).objective)
    record = trials[0].to_dict()
    assert record["objective"] == pytest.approx(1.0) and record["mean_margin"] == pytest.approx(1)
    assert record["margins"]["0:m"] == pytest.approx({"gain": 1, "quality": 1, "srcc": 1})


def test_pareto_front() -> None:
    trials = [
        _trial(10, gain=1.0, quality=0.9, clean=0, ratio=1),
        _trial(20, gain=2.0, quality=0.95, clean=0, ratio=1),
        _trial(30, gain=2.5, quality=0.93, clean=0, ratio=1),  # dominated by t*=20
        _trial(40, gain=0.5, quality=0.8, clean=0, ratio=1),
    ]
    assert [t.config.t_star for t in pareto_front(trials)] == [40, 10, 20]


# --- budget ---------------------------------------------------------------------------------


def _base(*names: str) -> dict[str, dict[str, float]]:
    """Baseline figures for panels ``names`` (default one panel of ``ToyMetric``)."""
    return {name: dict(BASE) for name in (names or ("0:toy",))}


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
    record = tmp_path / "run" / "trials.json"
    tuner = Tuner(
        pairs, ToyMetric(), linearity, SleepyDefense, budget=2.5, baseline=_base(),
        progress=False, record=record,
    )  # fmt: skip
    tuner.trial(PurifierConfig(t_star=10, steps=1))
    # written after every trial, so a search stopped halfway keeps what it measured
    assert [t["config"]["steps"] for t in json.loads(record.read_text())] == [1]
    tuner.coordinate_search(PurifierConfig(t_star=10, steps=1), {"steps": (1, 2, 3, 4)}, rounds=1)
    written = json.loads(record.read_text())
    assert [t["config"]["steps"] for t in written] == [1, 2, 3, 4]
    assert written[3]["skipped"] and written[0]["margins"]["0:toy"]["gain"] == pytest.approx(
        (BASE["gain"] - written[0]["gain"]) / (0.5 * BASE["gain"])
    )
    by_steps = {c.steps: t for c, t in tuner.trials.items()}
    assert sorted(by_steps) == [1, 2, 3, 4]
    assert by_steps[4].skipped and by_steps[4].estimated_ratio > 3.75
    assert math.isnan(by_steps[4].gain)
    assert not by_steps[3].skipped and by_steps[3].time_ratio > 2.5
    best = tuner.best()
    assert best is not None and best.time_ratio <= 2.5 and best.config.steps in (1, 2)
    # Figures come from the harness: the defense darkens by t*/1000, Quality < 1.
    assert 0 < by_steps[1].quality < 1 and by_steps[1].gain > 0
    tuner.close()


def test_unrunnable_values_are_named_not_dropped_silently(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pairs = harness.collect_pairs(write_tiny_dataset(tmp_path / "d"))
    linearity = {(32, 32): SleepyDefense.UNIT}
    tuner = Tuner(
        pairs, ToyMetric(), linearity, SleepyDefense, budget=9, baseline=_base(), progress=False
    )
    start = PurifierConfig(t_star=10, steps=1)
    with caplog.at_level("WARNING"):
        tuner.coordinate_search(start, {"steps": (1, 50)}, rounds=1)
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
        base = {"0:" + metric.name: BASE}
        tuner = Tuner(
            pairs, metric, linearity, SleepyDefense, budget=9, baseline=base, progress=False
        )
        alone[metric.name] = tuner.trial(config)
        assert alone[metric.name].panels == {}  # one panel: nothing extra recorded
    both = Tuner(
        pairs, ToyMetric(), linearity, SleepyDefense, budget=9, extra=[(pairs, BrightMetric())],
        baseline=_base("0:toy", "1:bright"), progress=False,
    ).trial(config)  # fmt: skip
    assert list(both.panels) == ["0:toy", "1:bright"]
    for key in ("gain", "quality", "clean_gain"):
        want = (getattr(alone["toy"], key) + getattr(alone["bright"], key)) / 2
        assert getattr(both, key) == pytest.approx(want)
        assert both.panels["1:bright"][key] == pytest.approx(getattr(alone["bright"], key))
    # darkening by 10 % lowers the brightness score by exactly 10 % on every image
    assert alone["bright"].clean_gain == pytest.approx(10.0)
    # each panel is measured against its own baseline; the score is the worst margin of all
    assert both.margins == {
        "0:toy": baseline_margins(both.panels["0:toy"], BASE),
        "1:bright": baseline_margins(both.panels["1:bright"], BASE),
    }
    assert both.objective == min(v for m in both.margins.values() for v in m.values())
    with pytest.raises(ValueError, match=r"baseline figures for panels \['0:toy'\], need"):
        Tuner(
            pairs, ToyMetric(), linearity, SleepyDefense, budget=9, baseline=_base(),
            extra=[(pairs, BrightMetric())], progress=False,
        )  # fmt: skip


def test_mean_figures() -> None:
    assert mean_figures({"a": {"gain": 1.0, "q": 0.5}, "b": {"gain": 3.0, "q": 0.7}}) == {
        "gain": 2.0,
        "q": pytest.approx(0.6),
    }
    with pytest.raises(ValueError, match="no panel"):
        mean_figures({})


def test_tuner_rejects_a_bad_budget(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="budget must be > 0"):
        Tuner([], ToyMetric(), {}, SleepyDefense, budget=0, baseline=_base(), progress=False)


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
    assert PANEL_IMAGES[:12] == TUNING_IMAGES and len(PANEL_IMAGES) == 34 == len(set(PANEL_IMAGES))
    assert all(n.startswith(("bsds_", "sunhays_")) for n in PANEL_IMAGES)
    parser = tune_cli.build_parser()
    assert parser.parse_args(["--panel-images"]).images.split(",") == list(PANEL_IMAGES)
    assert parser.parse_args([]).images.split(",") == list(TUNING_IMAGES)
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
    assert record["baseline"] == "resize" and record["target_margins"]["quality"] == 0.03
    assert record["command"].startswith("python scripts/tune.py --tuning-dir")
    trials = json.loads((tmp / "run" / "trials.json").read_text())
    assert record["search"]["method"] == "coordinate"
    assert record["search"]["trials_run"] == len(trials) in (3, 4)  # path-dependent
    best = max(trials, key=lambda t: (t["objective"], t["mean_margin"], -t["time_ratio"]))
    assert best["config"] == chosen.to_dict()
    resize = record["baselines"]["resize"]
    assert best["margins"]["0:toy"] == pytest.approx(baseline_margins(best, resize))
    assert record["beats_baseline_everywhere"] == (best["objective"] > 0)


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


def test_the_shipped_defaults_are_the_tuners_recorded_choice() -> None:
    """Since stop 35 the shipped knobs are the tuner's pick, none set by hand: the defaults
    file equals the choice its record holds."""
    assert hand_set_knobs(DEFAULTS_FILE) is None
    record = json.loads(DEFAULTS_FILE.with_name("defaults.provenance.json").read_text())
    assert json.loads(DEFAULTS_FILE.read_text()) == record["defaults"]


def test_script_runs_as_a_file() -> None:
    done = subprocess.run(
        [sys.executable, "scripts/tune.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "--budget" in done.stdout
