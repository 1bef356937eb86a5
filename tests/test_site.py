"""The documentation site's sources: generated API pages are current, every page is in the navigation,
and notebooks are committed without outputs. (`mkdocs build --strict` itself runs after the tests, in
the README's test command, because it renders the notebooks the tests execute.)"""

import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _load(path: pathlib.Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_pages_are_current():
    gen_api = _load(DOCS / "gen_api.py", "gen_api")
    for page, text in gen_api.pages().items():
        path = DOCS / "api" / page
        assert path.exists() and path.read_text() == text, f"docs/api/{page} is stale: run `python docs/gen_api.py`"
    stale = {p.name for p in (DOCS / "api").glob("*.md")} - set(gen_api.pages())
    assert not stale, f"docs/api has pages gen_api.py no longer writes: {sorted(stale)}"


def test_every_page_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = [p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md") if "notebooks/" not in p.as_posix()]
    missing = [p for p in pages if f": {p}" not in nav and f"- {p}" not in nav]
    assert not missing, f"add these pages to mkdocs.yml's nav: {missing}"


NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 8


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path):
    cells = json.loads(path.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code, f"{path.name} has no code"
    dirty = [i for i, c in enumerate(code) if c.get("outputs") or c.get("execution_count") is not None]
    assert not dirty, f"{path.name}: code cells {dirty} carry outputs; clear them before committing"
    assert cells[0]["cell_type"] == "markdown" and "".join(cells[0]["source"]).startswith("# "), (
        f"{path.name} must open with a markdown cell whose first line is its '# Title'"
    )
