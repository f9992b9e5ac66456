"""The docs site's generated pages are up to date and its API reference covers every public name.

The site itself is built by CI (`mkdocs build --strict` in .ci/run), which fails on any warning.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torchkeras_io as tkio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import docs_tables  # noqa: E402


def test_generated_tables_are_up_to_date():
    # a new adapter, exporter or optimizer changes these pages: run `python tools/docs_tables.py`
    for name, make in docs_tables.TABLES.items():
        assert (ROOT / "docs" / name).read_text() == make(), f"docs/{name} is stale: run python tools/docs_tables.py"


def test_api_reference_covers_public_names():
    api = (ROOT / "docs" / "api.md").read_text()
    documented = set(re.findall(r"::: torchkeras_io\.(\w+)", api))
    documented |= {m for line in re.findall(r"members: \[(.*)\]", api) for m in re.findall(r"\w+", line)}
    from torchkeras_io import errors

    for name in tkio.__all__:
        obj = getattr(tkio, name)
        if getattr(obj, "__module__", None) == errors.__name__:
            continue  # the errors module is documented whole
        assert name in documented, f"tkio.{name} is missing from docs/api.md"
    text = (ROOT / "mkdocs.yml").read_text()
    for page in ("index.md", "api.md", "layers.md", "optimizers.md", "corpus.md"):
        assert page in text and (ROOT / "docs" / page).exists()


def test_zoo_page_lists_every_zoo_case_and_all_match():
    # docs/zoo.md is rendered from what the zoo tests measured (python tools/zoo_table.py, slow run);
    # here, without rerunning them: the page has a row for each model the tests define, a number
    # in each cell the tests cover, and no case marked as failing
    import zoo_table

    page = (ROOT / "docs" / "zoo.md").read_text()
    assert "zoo.md" in (ROOT / "mkdocs.yml").read_text()
    for table, rows in zoo_table.expected_cases().items():
        columns = zoo_table.TABLES[table][2]
        for row, covered in rows.items():
            line = next((ln for ln in page.splitlines() if ln.startswith(f"| {row} |")), None)
            assert line is not None, f"docs/zoo.md has no row for {row}: run python tools/zoo_table.py"
            cells = [c.strip() for c in line.strip("|").split("|")[1:]]
            assert len(cells) == len(columns), line
            for column, cell in zip(columns, cells):
                if column in covered:
                    assert float(cell) <= 1e-4, f"docs/zoo.md: {row} / {column} is {cell!r}"
                else:
                    assert cell == "—", line
