"""docs/threat-model.md maps each guarantee to the test that shows it: every test it names must exist, every
row of a guarantee table must name one (or say it is not protected), and the bench scripts it cites exist."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "threat-model.md").read_text(encoding="utf-8")
REF = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?(?:\[[^\]`]*\])?`")


@cache
def functions_in(path: str) -> frozenset[str]:
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    return frozenset(node.name for node in ast.walk(tree)
                     if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_"))


def references() -> list[tuple[str, str | None]]:
    return sorted(set(REF.findall(DOC)), key=lambda r: (r[0], r[1] or ""))


def test_the_page_names_many_tests():
    named = [r for r in references() if r[1]]
    assert len(named) >= 60, len(named)


@pytest.mark.parametrize(("path", "name"), references(), ids=lambda v: v or "")
def test_every_named_test_exists(path, name):
    assert (ROOT / path).is_file(), f"{path} does not exist"
    if name:
        assert name in functions_in(path), f"{path} has no test called {name}"


def guarantee_rows() -> list[str]:
    """Body rows of every table whose last header column is `test`."""
    rows, in_table = [], False
    for line in DOC.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells is None:
            in_table = False
        elif not in_table:
            in_table = cells[-1] == "test"
        elif not set(line) <= set("|- "):
            rows.append(line)
    return rows


def test_every_guarantee_row_names_a_test_or_says_it_is_not_protected():
    rows = guarantee_rows()
    assert len(rows) >= 40
    for row in rows:
        last = row.strip().strip("|").split("|")[-1]
        assert REF.search(last) or ("not protected" in row and last.strip() == "—"), row


def test_no_placeholder_is_left_and_the_bench_scripts_exist():
    assert not re.search(r"\b[A-Z]+_(TABLE|FIGURES)\b", DOC)
    for script in set(re.findall(r"python (bench/\w+\.py)", DOC)):
        assert (ROOT / script).is_file(), script
