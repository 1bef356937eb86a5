"""Collect every notebook in this folder as a test: it must run top to bottom and agree with its claims.

Each notebook is its own test file as far as pytest-xdist's `--dist loadfile` is concerned, so the
notebooks run in parallel with each other and with the unit tests. The executed copies land in
`docs/notebooks/`, which the documentation site renders (see `execute.py`).
"""

from __future__ import annotations

import pytest
from execute import claim_problems, execute


def pytest_collect_file(parent, file_path):
    if file_path.suffix == ".ipynb" and file_path.name[:2].isdigit():
        return NotebookFile.from_parent(parent, path=file_path)
    return None


class NotebookFile(pytest.File):
    def collect(self):
        item = NotebookItem.from_parent(self, name=self.path.stem)
        item.add_marker(pytest.mark.slow)  # runs the notebook top to bottom: deselected by -m "not slow"
        yield item


class NotebookItem(pytest.Item):
    def runtest(self):
        record = execute(self.path)
        problems = claim_problems(record)
        if problems:
            raise NotebookClaimError(problems)

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, NotebookClaimError):
            return f"{self.path.name}: {excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, f"notebook {self.path.name}"


class NotebookClaimError(AssertionError):
    pass
