"""The documentation stays whole: relative links resolve inside the repository, the tests that
docs/guarantees.md names exist, and no project file points to documents outside the repository.
Pure and fast: reads text files only (no torch, no pipeline imports)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", ROOT / "input" / "README.md", *(ROOT / "docs").glob("*.md")])

# Written in pieces so that this file does not match what it looks for.
OUTSIDE = ["DESIGN" + ".md", "seeds" + "/", "PEER" + "_NOTES", ".." + "/shared", "shared" + "/realdata"]
# The one legitimate use of the outside sample: the real-radiograph test, skipped when it is absent.
ALLOWED = {("tests/conftest.py", "shared" + "/realdata"), ("tests/test_images.py", "shared" + "/realdata")}
TEXT = {".py", ".md", ".yaml", ".yml", ".txt", ".sh", ".ini", ".cfg", ".toml", ".json"}
GENERATED = {".git", ".venv", "__pycache__", ".pytest_cache", "folds", "submissions", "input", ".whl", ".gl"}

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
TEST_REF = re.compile(r"tests/(test_\w+\.py)::(\w+)")


def _prose(md: Path) -> str:
    return FENCE.sub("", md.read_text(encoding="utf-8"))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    h = heading.strip().lower().replace("`", "")
    return re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", h))


def _anchors(md: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", _prose(md), re.M)}


def _links(md: Path):
    for target in LINK.findall(_prose(md)):
        if re.match(r"[a-z]+:", target):                   # http:, https:, mailto:
            continue
        yield target


def _project_files():
    for p in sorted(ROOT.rglob("*")):
        rel = p.relative_to(ROOT)
        if not p.is_file() or GENERATED & set(rel.parts[:-1]):
            continue
        if rel.parts[0] == "experiments" and len(rel.parts) > 2:     # an experiment's outputs
            continue
        if p.suffix in TEXT or rel.as_posix() in (".ci/run", ".gitignore"):
            yield rel.as_posix(), p


def test_docs_exist():
    assert (ROOT / "docs" / "README.md").is_file()
    assert len(DOCS) > 3


@pytest.mark.parametrize("md", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve_inside_the_repository(md):
    bad = []
    for target in _links(md):
        path, _, anchor = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        if ROOT not in dest.parents and dest != ROOT:
            bad.append(f"{target}: outside the repository")
        elif not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading '#{anchor}' in {dest.relative_to(ROOT)}")
    assert not bad, f"{md.relative_to(ROOT)}: " + "; ".join(bad)


def test_named_tests_exist():
    missing = []
    for md in DOCS:
        for fname, name in set(TEST_REF.findall(md.read_text(encoding="utf-8"))):
            f = ROOT / "tests" / fname
            if fname == "test_x.py":
                continue
            names = {n.name for n in ast.parse(f.read_text(encoding="utf-8")).body
                     if isinstance(n, ast.FunctionDef)} if f.is_file() else set()
            if name not in names:
                missing.append(f"{md.relative_to(ROOT)}: tests/{fname}::{name}")
    assert not missing, missing


def test_no_project_file_points_outside_the_repository():
    found = []
    for rel, p in _project_files():
        text = p.read_text(encoding="utf-8", errors="replace")
        for word in OUTSIDE:
            if word in text and (rel, word) not in ALLOWED:
                line = text[:text.index(word)].count("\n") + 1
                found.append(f"{rel}:{line}: {word}")
    assert not found, found
