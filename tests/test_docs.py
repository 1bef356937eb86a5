"""Every python example in the docs pages runs as written."""

import pathlib
import re

import pytest

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
EXAMPLES = [
    (f"{page.name}[{i}]", code)
    for page in sorted(DOCS.glob("*.md"))
    for i, code in enumerate(BLOCK.findall(page.read_text()))
]


def test_there_are_examples():
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize(("name", "code"), EXAMPLES, ids=[n for n, _ in EXAMPLES])
def test_docs_example_runs(name, code):
    exec(compile(code, f"<docs {name}>", "exec"), {"__name__": "__docs__"})
