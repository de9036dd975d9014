"""``slimkit new-technique NAME``: write a technique package that passes the conformance kit.

The templates ship as package data (``slimkit/scaffold/templates``). One name gives:

```
DIR/<package>/__init__.py, config.py, handler.py     the config, a no-op parametrization,
                                                     the handler and its registration
DIR/tests/test_<package>_conformance.py              the conformance entry (pytest)
DIR/docs/techniques/<name>/overview.md, guide.md, notebook.ipynb
DIR/docs/rfcs/<name>/proposal.md, design.md          from docs/rfcs/templates
```

Everything is rendered in memory and checked first (a bad name, an existing file): on any
error nothing is written, and a failure while writing removes what was written.

Example:
    >>> paths = new_technique("my-noise", "contrib")
    >>> [str(p) for p in paths][:2]
    ['contrib/my_noise/__init__.py', 'contrib/my_noise/config.py']
"""

from __future__ import annotations

import contextlib
import importlib.util
import keyword
import os
import re
from importlib import resources
from pathlib import Path

from slimkit.core.io import atomic_path

NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


def template_text(relative: str) -> str:
    """The text of one template, e.g. ``"rfcs/proposal.md"`` (read from package data)."""
    return resources.files("slimkit.scaffold").joinpath("templates", relative).read_text(
        encoding="utf-8")


def check_name(name: str) -> str:
    """Return the Python package name for technique ``name``, or raise ``ValueError``.

    A name is lowercase words joined by single hyphens (``my-noise``), 3 to 40 characters,
    not a registered technique, and its package name (``my_noise``) is not a Python keyword
    nor an importable module (it would shadow it).
    """
    if not isinstance(name, str) or not NAME_RE.match(name) or not 3 <= len(name) <= 40:
        raise ValueError(
            f"technique name must be 3-40 characters of lowercase words joined by single "
            f"hyphens, starting with a letter (e.g. 'my-noise'), got {name!r} (NAME)"
        )
    import slimkit as sk

    if name in {t.name for t in sk.techniques()}:
        raise ValueError(f"a technique named {name!r} is already registered; pick another "
                         "name (NAME)")
    package = name.replace("-", "_")
    if keyword.iskeyword(package):
        raise ValueError(f"{name!r} gives the package name {package!r}, a Python keyword (NAME)")
    if importlib.util.find_spec(package) is not None:
        raise ValueError(f"{name!r} gives the package name {package!r}, which is already an "
                         "importable module; pick another name (NAME)")
    return package


def render(name: str) -> dict[str, str]:
    """``{relative path: text}`` of every file ``new_technique`` writes for ``name``."""
    package = check_name(name)
    words = name.split("-")
    values = {
        "technique": name,
        "package": package,
        "Class": "".join(w[:1].upper() + w[1:] for w in words),
        "title": " ".join(words).capitalize(),
        "test_path": f"tests/test_{package}_conformance.py",
    }
    layout = {
        f"{package}/__init__.py": "package/__init__.py.tmpl",
        f"{package}/config.py": "package/config.py.tmpl",
        f"{package}/handler.py": "package/handler.py.tmpl",
        values["test_path"]: "tests/test_conformance.py.tmpl",
        f"docs/techniques/{name}/overview.md": "docs/overview.md.tmpl",
        f"docs/techniques/{name}/guide.md": "docs/guide.md.tmpl",
        f"docs/techniques/{name}/notebook.ipynb": "docs/notebook.ipynb.tmpl",
        f"docs/rfcs/{name}/proposal.md": "rfcs/proposal.md",
        f"docs/rfcs/{name}/design.md": "rfcs/design.md",
    }
    out = {}
    for target, template in layout.items():
        text = template_text(template)
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", value)
        out[target] = text
    return out


def new_technique(name: str, directory: str | os.PathLike = ".") -> list[Path]:
    """Write a new technique called ``name`` under ``directory``; returns the files written.

    Raises ``ValueError`` for a bad name or when a file it would write already exists;
    ``FileNotFoundError`` when ``directory`` does not exist. Nothing is left behind on error.
    """
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"directory {str(root)!r} does not exist (--dir)")
    files = render(name)
    existing = [p for p in files if (root / p).exists()]
    if existing:
        raise ValueError(f"{', '.join(str(root / p) for p in existing)} already exist(s); "
                         "nothing was written (pick another NAME or --dir)")
    written: list[Path] = []
    made: list[Path] = []
    try:
        for relative, text in files.items():
            path = root / relative
            for parent in reversed(path.relative_to(root).parents[:-1]):
                folder = root / parent
                if not folder.exists():
                    folder.mkdir()
                    made.append(folder)
            with atomic_path(path) as tmp:
                tmp.write_text(text, encoding="utf-8")
            written.append(path)
    except BaseException:
        for path in written:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return written
