"""The documentation points at things that exist: docs/ARCHITECTURE.md's files and tests, and every
document a docstring or comment of the package cites."""

from __future__ import annotations

import re

from tests.helpers import REPO

ARCHITECTURE = (REPO / "docs" / "ARCHITECTURE.md").read_text()
PACKAGE = REPO / "src" / "internvl_lightning"


def where_to_add_rows() -> list[tuple[str, str]]:
    """(file to touch, test node) of each row of the "Where to add" table."""
    table = ARCHITECTURE.split("## Where to add", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 3 and cells[2].startswith("`tests/"):
            rows.append((re.search(r"`([\w/]+\.py)`", cells[1])[1], cells[2].strip("`")))
    return rows


def test_every_where_to_add_row_names_a_real_file_and_test():
    rows = where_to_add_rows()
    assert len(rows) == 5, rows
    for touch, node in rows:
        assert (PACKAGE / touch).is_file(), touch
        path, _, name = node.partition("::")
        assert re.search(rf"^def {name}\(", (REPO / path).read_text(), re.M), node


def test_every_package_path_in_the_folder_table_exists():
    table = ARCHITECTURE.split("| path | owns |", 1)[1].split("\n## ", 1)[0]
    for cell in re.findall(r"^\| ([^|]+) \|", table, re.M):
        for name in re.findall(r"`([\w/.]+)`", cell):
            folder = name.split("/")[0] + "/" if "/" in name else ""
            # "model/lora.py, `drop_path.py`": bare names live in the row's first folder
            first = re.findall(r"`([\w]+)/", cell)
            base = PACKAGE / (first[0] if first and not folder else "")
            assert (PACKAGE / name).exists() or (base / name).exists(), name


def test_package_text_cites_only_documents_in_the_repository():
    cited = set()
    for path in PACKAGE.rglob("*.py"):
        # documents: a path (docs/ARCHITECTURE.md) or an upper-case name (DESIGN.md), not output files
        found = re.findall(r"[\w.-]+/[\w./-]+\.md\b|\b[A-Z][A-Z_]+\.md\b", path.read_text())
        cited |= {(path, doc) for doc in found}
    missing = [f"{p.relative_to(REPO)}: {doc}" for p, doc in cited if not (REPO / doc).is_file()]
    assert not missing, missing
