"""The documentation points at things that exist and shows what the code does: docs/ARCHITECTURE.md's
files and tests, every document a docstring or comment of the package cites, every relative link of
the Markdown documents, the paths the READMEs name, the README's `plan` outputs and the `pipeline`
spec format in conf/README.md. (The README's Python blocks run in tests/integration/test_readme_blocks.py.)"""

from __future__ import annotations

import re
from pathlib import Path

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


# ---- the Markdown documents: links, named paths, shown outputs -----------------------------------

OUTPUT_DIRS = {"runs", "build", "dist", "lightning_logs"}  # what runs write (.gitignore), not documents
SOURCE_DIRS = [
    p for p in REPO.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in OUTPUT_DIRS
]
DOCUMENTS = sorted([*REPO.glob("*.md"), *(doc for d in SOURCE_DIRS for doc in d.rglob("*.md"))])
FENCED = re.compile(r"^```.*?^```", re.M | re.S)


def slug(heading: str) -> str:
    """A heading's anchor as GitHub writes it: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(document: Path) -> set[str]:
    text = FENCED.sub("", document.read_text())
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


def test_the_documents_are_found():
    names = {str(p.relative_to(REPO)) for p in DOCUMENTS}
    assert {"README.md", "conf/README.md", "benchmarks/README.md", "tests/manual/README.md"} <= names


def test_every_relative_link_of_the_documents_points_at_a_file_and_heading():
    broken = []
    for doc in DOCUMENTS:
        for target in re.findall(r"\]\(([^)\s]+)\)", FENCED.sub("", doc.read_text())):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            where = f"{doc.relative_to(REPO)}: ({target})"
            if not file.exists():
                broken.append(f"{where} names no file")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{where} names no heading of {file.relative_to(REPO)}")
    assert not broken, broken


def test_every_repository_path_the_readmes_name_exists():
    """A backticked path in README.md or conf/README.md whose first folder is one of the repository's
    (``conf/``, ``tests/``, ...) or the package's (``training/``, ``demo/``, ...) names a file."""
    package_dirs = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    repo_dirs = {p.name for p in SOURCE_DIRS}
    missing, checked = [], 0
    for doc in (REPO / "README.md", REPO / "conf" / "README.md"):
        for name in re.findall(r"`([^`\s]+)`", FENCED.sub("", doc.read_text())):
            path = re.split(r"::|:", name)[0]  # file.py::test or file.py:function
            if "/" not in path or re.search(r"[<>{}$]", path):
                continue  # not a path, or a placeholder such as runs/<stage>/hf
            first = path.split("/")[0]
            bases = [base for base, dirs in ((REPO, repo_dirs), (PACKAGE, package_dirs)) if first in dirs]
            if not bases:
                continue  # a path the reader makes (runs/, shards/, ckpt/)
            checked += 1
            if not any(any(b.glob(path)) if "*" in path else (b / path).exists() for b in bases):
                missing.append(f"{doc.relative_to(REPO)}: {name}")
    assert not missing, missing
    assert checked >= 20, checked


def readme_plans() -> list[str]:
    """Each ``plan`` output the README shows (a code block may hold several)."""
    blocks = re.findall(r"^```\n(plan: preset .*?)^```", (REPO / "README.md").read_text(), re.M | re.S)
    return [p.strip() for block in blocks for p in re.split(r"\n\n(?=plan: preset )", block)]


def test_the_plan_output_the_readme_shows_is_what_plan_prints():
    from internvl_lightning.training.plan import plan

    shown = readme_plans()
    assert len(shown) == 2, shown
    for text in shown:
        head = re.match(r"plan: preset (\S+), stage (\S+) .*?, (\d+) GPUs, ZeRO-(\d), ([\d.]+) GiB", text)
        preset, stage, gpus, zero, memory = head.groups()
        printed = str(plan(preset, stage, gpus=int(gpus), zero=int(zero), gpu_memory_gb=float(memory)))
        assert text == printed.strip(), f"README's plan for {preset} differs from:\n{printed}"


def test_the_pipeline_spec_section_names_every_argument_and_its_example_parses(tmp_path):
    """conf/README.md documents the spec file of `pipeline`: its example is a valid spec of the
    command (parsed by the command's own parser) and its key list is the function's arguments."""
    import dataclasses
    import inspect

    from internvl_lightning.cli import build_parser, command_function
    from internvl_lightning.training.pipeline import StageSpec

    section = (REPO / "conf" / "README.md").read_text().split("## Pipeline spec\n", 1)[1].split("\n## ", 1)[0]
    example = re.search(r"^```yaml\n(.*?)^```", section, re.M | re.S)[1]
    spec = tmp_path / "pipeline.yaml"
    spec.write_text(example)
    fn = command_function("pipeline")
    parsed = build_parser("pipeline", fn).parse_args(["--config", str(spec)])
    assert [s.name for s in parsed.stages] == ["stage1", "stage1_5", "stage2"]
    for stage in parsed.stages:
        assert (REPO / stage.config).is_file(), stage.config
        assert "data.shards" in stage.set
    listed = set(re.findall(r"^ *- `(\w+)`", section, re.M))
    arguments = {
        n for n, p in inspect.signature(fn).parameters.items() if "Callable" not in str(p.annotation)
    }
    assert listed == arguments | {f.name for f in dataclasses.fields(StageSpec)}, listed
