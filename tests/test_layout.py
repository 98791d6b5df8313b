"""The layout (issue 31): scripts are entry points nobody else imports, no import cycle, no
helper module at the root, every import one that ``MAY_IMPORT`` allows, docs/architecture.md
current, and setup.cfg installs every package with the data an installed copy needs."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest

from common.import_graph import find_cycle, module_graph, package_graph
from common.paths import ROOT, WEIGHTS_DIR
from purifier.perturbation_detector import RELEASE_PATTERN as DETECTOR_PATTERN
from purifier.weights import RELEASE_PATTERN as DENOISER_PATTERN
from purifier.weights import newest_folder
from scripts import architecture_diagram

GRAPH = module_graph(ROOT)


def top(module: str) -> str:
    return module.split(".")[0]


def test_the_scan_sees_the_project() -> None:
    assert "model" in GRAPH and "evaluation.harness" in GRAPH and "tests.test_layout" in GRAPH
    assert "metrics.linearity" in GRAPH["model"]
    assert "evaluation.harness" in GRAPH["test"]
    assert not any(m.startswith((".venv", "build")) for m in GRAPH)


def test_only_scripts_and_tests_import_scripts() -> None:
    offenders = {
        module: sorted(t for t in targets if top(t) == "scripts")
        for module, targets in GRAPH.items()
        if top(module) not in ("scripts", "tests")
    }
    assert {m: t for m, t in offenders.items() if t} == {}


def test_no_script_imports_another_script() -> None:
    offenders = {
        module: sorted(t for t in targets if top(t) == "scripts" and t != "scripts")
        for module, targets in GRAPH.items()
        if top(module) == "scripts"
    }
    assert {m: t for m, t in offenders.items() if t} == {}


def test_no_import_cycle() -> None:
    assert find_cycle(GRAPH) is None
    assert find_cycle(package_graph(GRAPH)) is None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_helper_module_at_the_root() -> None:
    assert sorted(p.name for p in ROOT.glob("*.py")) == ["defense.py", "model.py", "test.py"]


def test_every_import_is_allowed() -> None:
    graph = architecture_diagram.project_package_graph()
    assert set(graph) <= set(architecture_diagram.MAY_IMPORT), "declare new packages there"
    refused = {
        unit: sorted(targets - set(architecture_diagram.MAY_IMPORT[unit]))
        for unit, targets in graph.items()
    }
    assert {u: t for u, t in refused.items() if t} == {}


def test_architecture_doc_is_current() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    assert text == architecture_diagram.render(), "run python scripts/architecture_diagram.py"
    for unit in architecture_diagram.project_package_graph():
        assert re.search(rf"^### `{unit}(/|\.py)`$", text, re.MULTILINE), unit


def setup_cfg() -> configparser.ConfigParser:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    return setup


def test_setup_cfg_installs_every_package_but_scripts_and_tests() -> None:
    include = setup_cfg()["options.packages.find"]["include"].split()
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"scripts", "tests"}
    assert {name.rstrip("*") for name in include} == packages


@pytest.mark.parametrize("pattern", [DENOISER_PATTERN, DETECTOR_PATTERN], ids=["ddpm", "detector"])
def test_setup_cfg_ships_the_newest_release(pattern: re.Pattern[str]) -> None:
    """An installed ``defense`` / ``purify`` loads the newest release: it must be shipped."""
    newest = newest_folder(WEIGHTS_DIR, pattern)
    assert newest is not None
    shipped = setup_cfg()["options.package_data"]["weights"].split()
    assert f"{newest.name}/*" in shipped
    assert "*.json" in setup_cfg()["options.package_data"]["purifier"].split()


def test_console_script_points_into_a_package() -> None:
    scripts = setup_cfg()["options.entry_points"]["console_scripts"]
    assert "purify = purifier.cli:main" in scripts
    assert Path(ROOT / "purifier" / "cli.py").is_file()
