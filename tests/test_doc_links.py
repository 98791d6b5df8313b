"""Links in the docs. Every relative link or image of ``README.md``, ``BENCHMARKS.md`` and
``docs/*.md`` resolves to a file or folder of the repository, from the folder of the page
that holds it (a report written for the repository root and copied into ``docs/`` breaks
here, not in a reader's browser)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from common.paths import ROOT

# [text](target) and ![alt](target); the target ends at whitespace or the closing bracket.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
PAGES = sorted([ROOT / "README.md", ROOT / "BENCHMARKS.md", *(ROOT / "docs").glob("*.md")])


def relative_links(markdown: str) -> list[str]:
    """Link targets of ``markdown`` that point into the repository (no URL, no bare anchor),
    without their ``#anchor``; code blocks are skipped."""
    targets, in_code = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            continue
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue
            targets.append(target.split("#", 1)[0])
    return targets


def test_relative_links_are_found_and_urls_skipped() -> None:
    text = (
        "see [a](docs/a.md#part), ![g](../g.png), [u](https://x.org/y), [s](#top)\n"
        "```\n[not](a/link.md)\n```\n"
    )
    assert relative_links(text) == ["docs/a.md", "../g.png"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = [
        target
        for target in relative_links(page.read_text(encoding="utf-8"))
        if not (page.parent / target).exists()
    ]
    assert not broken, f"{page.relative_to(ROOT)} links to missing files: {broken}"
