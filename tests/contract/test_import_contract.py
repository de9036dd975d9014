"""The import contract: shared code knows no technique.

core/, export/, metrics/, recipes/, integrations/, testing/, storage/, search/, cli.py and the
author API (authoring.py) may talk to techniques only through the protocol
(:class:`slimkit.Technique` and the state objects). This test reads their source (the AST,
so docstrings and comments do not count) and fails on:

- an import of a technique package (``slimkit.techniques...``, or the old shim paths
  ``slimkit.pruning`` / ``slimkit.clustering`` / ``slimkit.quantization``), at any depth,
  including imports inside functions;
- a use of a class a technique package defines (``QATConfig``, ``ClusterSnap``, ...) as a name
  or an attribute (``sk.QATConfig`` too);
- a string constant equal to a registered technique's name (branching on
  ``rec["technique"] == "quantization"``). A name that is also a family name is a category
  the family verbs use, not a technique's identity, and is not flagged.

There is no allow-list: a shared module that needs a technique's knowledge must get it
from a Technique method.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import slimkit
import slimkit.techniques

SRC = Path(slimkit.__file__).parent
SHARED = ["core", "export", "metrics", "recipes", "integrations", "testing", "storage",
          "search", "cli.py", "authoring.py"]
TECHNIQUE_PACKAGES = ("slimkit.techniques", "slimkit.pruning", "slimkit.clustering",
                      "slimkit.quantization")


def _shared_files() -> list[Path]:
    files = []
    for entry in SHARED:
        path = SRC / entry
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return files


def _technique_classes() -> set[str]:
    names = set()
    for info in pkgutil.walk_packages(slimkit.techniques.__path__, "slimkit.techniques."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            # Public classes: a private helper (_BadInput) may share a name with one of ours.
            if (inspect.isclass(obj) and obj.__module__.startswith("slimkit.techniques.")
                    and not name.startswith("_")):
                names.add(name)
    return names


def _technique_names() -> set[str]:
    techs = slimkit.techniques()
    families = {t.family for t in techs}
    return {t.name for t in techs} - families


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _violations(path: Path, classes: set[str], names: set[str]) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    docs = _docstrings(tree)
    where = path.relative_to(SRC.parent) if path.is_relative_to(SRC.parent) else path
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(TECHNIQUE_PACKAGES):
                    found.append(f"{where}:{node.lineno}: imports {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module.startswith(TECHNIQUE_PACKAGES):
                found.append(f"{where}:{node.lineno}: imports from {module}")
            if module == "slimkit":
                for alias in node.names:
                    if alias.name in classes:
                        found.append(f"{where}:{node.lineno}: imports {alias.name} from slimkit")
        elif isinstance(node, ast.Name) and node.id in classes:
            found.append(f"{where}:{node.lineno}: uses the technique class {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in classes:
            found.append(f"{where}:{node.lineno}: uses the technique class .{node.attr}")
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and id(node) not in docs and node.value in names):
            found.append(f"{where}:{node.lineno}: names the technique {node.value!r}")
    return found


def test_the_contract_sees_every_technique_class_and_name():
    # The check is only as good as what it looks for: it must know the built-in classes.
    classes, names = _technique_classes(), _technique_names()
    assert {"QATConfig", "ClusterSnap", "PruningMask", "ActivationQuantizer",
            "WeightFakeQuant", "ChannelPruningConfig"} <= classes
    assert {"magnitude-pruning", "weight-clustering", "qat", "channel-pruning"} <= names


def test_a_violation_is_caught(tmp_path):
    # The detector itself must fail on the three kinds of knowledge it forbids.
    bad = tmp_path / "probe.py"
    bad.write_text(
        "def f(rec, m):\n"
        "    from slimkit.techniques.quantization.activation import ActivationQuantizer\n"
        "    return rec['technique'] == 'qat' or isinstance(m, ActivationQuantizer)\n"
    )
    found = _violations(bad, _technique_classes(), _technique_names())
    assert len(found) == 3, found


@pytest.mark.parametrize("path", _shared_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_shared_code_knows_no_technique(path):
    found = _violations(path, _technique_classes(), _technique_names())
    assert not found, "shared code knows a technique:\n" + "\n".join(found)
