"""Every public name is documented, and every example in the docs runs.

Examples are the fenced ```python blocks of a docstring's `Example:` section; they are executed as
written, in a fresh namespace, so a stale example fails the suite.
"""

import inspect
import re
import textwrap

import pytest

import gradchain
from gradchain import schedules, tree

BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
# Names that are data, not behaviour: state containers and type aliases need a docstring only.
DATA_ONLY = {"Params", "Updates", "OptState", "Schedule"}


def _public(module, names):
    return [(f"{module.__name__}.{name}", getattr(module, name)) for name in names]


PUBLIC = (
    _public(gradchain, [n for n in gradchain.__all__ if n not in {"schedules", "tree"}])
    + _public(schedules, schedules.__all__)
    + _public(tree, tree.__all__)
)


def _needs_example(name: str, obj) -> bool:
    short = name.rsplit(".", 1)[1]
    return short not in DATA_ONLY and not short.endswith("State")


def _examples(obj) -> list[str]:
    doc = inspect.getdoc(obj) or ""
    return [textwrap.dedent(block) for block in BLOCK.findall(doc)]


@pytest.mark.parametrize(("name", "obj"), PUBLIC, ids=[n for n, _ in PUBLIC])
def test_public_name_is_documented(name, obj):
    short = name.rsplit(".", 1)[1]
    if short in DATA_ONLY:
        return
    doc = obj.__doc__
    assert doc and doc.strip(), f"{name} has no docstring"
    if _needs_example(name, obj):
        assert "Example" in doc, f"{name}: docstring has no Example section"
        assert _examples(obj), f"{name}: the Example section has no ```python block"


EXAMPLES = [
    (f"{name}[{i}]", code) for name, obj in PUBLIC if _needs_example(name, obj) for i, code in enumerate(_examples(obj))
]


@pytest.mark.parametrize(("name", "code"), EXAMPLES, ids=[n for n, _ in EXAMPLES])
def test_docstring_example_runs(name, code):
    exec(compile(code, f"<example {name}>", "exec"), {"__name__": "__example__"})


def test_module_docstrings():
    for module in (gradchain, schedules, tree):
        assert module.__doc__, module.__name__
