"""The repository documents itself: every link in README.md and docs/ points at a file
(and heading) that is in the repository, and nothing links outside it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])

_INLINE = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
_HTML = re.compile(r"""(?:href|src)=["']([^"']+)["']""")
_CODE_PATH = re.compile(r"`((?:[\w.-]+/)+[\w.-]+\.(?:md|py|toml|json|html|service))`")
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.MULTILINE)}


def _links(path: Path) -> list[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    return [
        *(m.group(1) for m in _INLINE.finditer(text)),
        *(m.group(1) for m in _REFERENCE.finditer(text)),
        *(m.group(1) for m in _HTML.finditer(text)),
    ]


def test_the_documents_exist() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in DOCS}
    assert {"README.md", "docs/architecture.md", "docs/protocol.md"} <= names


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves_inside_the_repository(doc: Path) -> None:
    problems: list[str] = []
    for link in _links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", link):  # http:, https:, mailto:, file:
            problems.append(f"{link}: points outside the repository")
            continue
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        if ROOT not in path.parents and path != ROOT:
            problems.append(f"{link}: leaves the repository")
        elif not path.exists():
            problems.append(f"{link}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            problems.append(f"{link}: no heading #{anchor} in {path.relative_to(ROOT)}")
    assert problems == [], problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_file_the_text_names_exists(doc: Path) -> None:
    """`docs/x.md`, `configs/grafana/dagrider.json`...: a path the text names in code
    quotes must be a file of the repository too (relative to the root or to the page)."""
    text = doc.read_text(encoding="utf-8")
    missing = [
        m.group(1)
        for m in _CODE_PATH.finditer(text)
        if not (ROOT / m.group(1)).exists() and not (doc.parent / m.group(1)).exists()
    ]
    assert missing == [], missing
