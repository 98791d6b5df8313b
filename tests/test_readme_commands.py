"""The README's commands. Every ``python scripts/X.py ...`` and ``purify ...`` in a shell code
block parses with that script's own options; every ``--flag`` of such a command quoted inline
in the prose is one of the script's options. A renamed or removed flag fails here rather than
in a user's shell. Commands with placeholders (``...``, ``[``, ``$``) and ``--help`` are
skipped; nothing is run."""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
from pathlib import Path
from types import ModuleType

import pytest

from common.paths import ROOT

COMMAND = re.compile(r"^(?:\w+=\S+ )*(?:python (scripts/\w+)\.py|(purify))(?: (.*))?$")
PLACEHOLDERS = ("...", "[", "$")


def shell_lines(markdown: str) -> tuple[list[str], list[str]]:
    """``(lines of the shell code blocks with backslash continuations joined, inline code
    spans)`` of ``markdown``."""
    blocks, spans, block, language = [], [], None, ""
    for line in markdown.splitlines():
        if line.startswith("```"):
            if block is None:
                block, language = [], line[3:].strip()
            else:
                if language in ("", "bash", "sh"):
                    blocks += re.sub(r"\s*\\\n\s*", " ", "\n".join(block)).splitlines()
                block = None
        elif block is not None:
            block.append(line)
        else:
            spans += re.findall(r"`([^`]+)`", line)
    return [b.strip() for b in blocks], [s.strip() for s in spans]


def commands(lines: list[str]) -> list[tuple[str, list[str]]]:
    """``(script module, arguments)`` of the script commands among ``lines``."""
    found = []
    for line in lines:
        match = COMMAND.match(line)
        if match is None or any(p in line for p in PLACEHOLDERS):
            continue
        module = (match.group(1) or "scripts/purify").replace("/", ".")
        args = shlex.split(match.group(3) or "", comments=True)
        if "--help" not in args:
            found.append((module, args))
    return found


def parse(script: ModuleType, args: list[str]) -> None:
    """Parse ``args`` with the script's own parser (``SystemExit`` if it refuses them); a thin
    script's parser lives in the package module its ``main`` comes from."""
    if not hasattr(script, "parse_args") and not hasattr(script, "build_parser"):
        script = importlib.import_module(script.main.__module__)
    if hasattr(script, "parse_args"):
        script.parse_args(args)
    else:
        script.build_parser().parse_args(args)


def help_text(script: ModuleType) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parse(script, ["--help"])
    return out.getvalue()


def readme_shell_lines() -> tuple[list[str], list[str]]:
    return shell_lines((ROOT / "README.md").read_text())


BLOCKS, SPANS = (commands(lines) for lines in readme_shell_lines())


def ids(found: list[tuple[str, list[str]]]) -> list[str]:
    return [f"{module[8:]} {' '.join(args)}"[:70] for module, args in found]


def test_the_readme_shows_the_main_commands() -> None:
    modules = {module for module, _ in BLOCKS}
    assert len(BLOCKS) >= 15 and len(SPANS) >= 10
    for script in ("purify", "benchmark", "tune", "finetune_bridge", "leave_one_attack_out"):
        assert f"scripts.{script}" in modules, script


@pytest.mark.parametrize("module, args", BLOCKS, ids=ids(BLOCKS))
def test_readme_command_parses(module: str, args: list[str]) -> None:
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            parse(importlib.import_module(module), args)
    except SystemExit:
        pytest.fail(f"{module} {shlex.join(args)}: {errors.getvalue().strip()}")


@pytest.mark.parametrize("module, args", SPANS, ids=ids(SPANS))
def test_readme_inline_flags_exist(module: str, args: list[str]) -> None:
    options = help_text(importlib.import_module(module))
    for flag in [a.split("=")[0] for a in args if a.startswith("--")]:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", options), f"{module}: {flag}"


def test_shell_lines_join_continuations_and_skip_other_languages() -> None:
    text = "\n".join(
        [
            "Run `purify a b --seed 1` or:",
            "```bash",
            "python scripts/tune.py --threads 1 \\",
            "    --budget 1.0  # note",
            "```",
            "```python",
            "python scripts/not_a_shell_line.py",
            "```",
        ]
    )
    blocks, spans = shell_lines(text)
    assert blocks == ["python scripts/tune.py --threads 1 --budget 1.0  # note"]
    assert spans == ["purify a b --seed 1"]
    assert commands(blocks) == [("scripts.tune", ["--threads", "1", "--budget", "1.0"])]
    assert commands(["python scripts/tune.py --output OUT ...", "purify --help"]) == []


def test_a_renamed_flag_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "README.md").write_text("```bash\npython scripts/tune.py --budgte 1\n```\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    ((module, args),) = commands(readme_shell_lines()[0])
    with pytest.raises(pytest.fail.Exception, match="unrecognized arguments: --budgte"):
        test_readme_command_parses(module, args)
    with pytest.raises(AssertionError, match="--budgte"):
        test_readme_inline_flags_exist(module, args)
