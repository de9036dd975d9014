"""The version lives in one place, src/slimkit/__init__.py, readable without importing."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import slimkit

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[2]


def _static_version() -> str:
    # What setuptools' `attr:` does first: read the literal from the module's syntax tree,
    # so building the package needs neither torch nor an import of slimkit.
    tree = ast.parse((ROOT / "src" / "slimkit" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets
                                             if isinstance(t, ast.Name)] == ["__version__"]:
            return ast.literal_eval(node.value)
    raise AssertionError("src/slimkit/__init__.py assigns no literal __version__")


def test_version_is_single_sourced():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "slimkit.__version__"}
    version = _static_version()
    assert version == slimkit.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]\d+|rc\d+)?", version), version


def test_changelog_has_an_entry_for_this_version():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[{re.escape(slimkit.__version__)}\] - \d{{4}}-\d{{2}}-\d{{2}}$",
                     changelog, re.M), "CHANGELOG.md needs '## [<version>] - <date>'"
    assert "## [Unreleased]" in changelog


def test_pytest_marks_the_slow_release_tests():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    markers = project["tool"]["pytest"]["ini_options"]["markers"]
    assert any(m.startswith("slow:") for m in markers)
