"""``slimkit conformance``: run entries outside pytest and print the pass table.

Example:
    $ slimkit conformance                                   # the built-in techniques
    $ slimkit conformance --entries tests/test_my_noise_conformance.py --check strip
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from slimkit.core.io import atomic_path
from slimkit.testing.entry import ConformanceEntry
from slimkit.testing.suite import pass_table, run_conformance


def load_entries(source: str | None) -> list[ConformanceEntry]:
    """Entries from a ``.py`` file (its ``ENTRIES``), ``module:attribute``, or the built-ins."""
    if source is None:
        from slimkit.testing.builtin import BUILTIN_ENTRIES

        return list(BUILTIN_ENTRIES)
    if source.endswith(".py"):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no such file {source!r} (--entries)")
        spec = importlib.util.spec_from_file_location(f"_slimkit_entries_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.resolve().parent))
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.pop(0)
        attr = "ENTRIES"
    else:
        name, _, attr = source.partition(":")
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            raise ValueError(f"cannot import {name!r}: {e} (--entries)") from e
        attr = attr or "ENTRIES"
    entries = getattr(module, attr, None)
    if not isinstance(entries, (list, tuple)) or not all(
        isinstance(e, ConformanceEntry) for e in entries
    ):
        raise ValueError(f"{source!r} has no list of ConformanceEntry called {attr!r} (--entries)")
    return list(entries)


def run_command(source: str | None, checks: list[str] | None, json_path: str | None) -> bool:
    """Run, print progress and the table; True when nothing failed unexpectedly."""
    entries = load_entries(source)
    console = Console()

    def progress(r):
        where = f" {r.model}" if r.model else ""
        style = {"pass": "green", "fail": "red", "xpass": "red"}.get(r.status, "yellow")
        # Notes quote messages such as "name [check]: ...": not rich markup. One line each.
        console.print(f"[{style}]{r.status:5}[/{style}] {escape(r.entry)} {r.check}{where} "
                      f"({r.seconds:.1f} s): {escape(r.note)}", highlight=False, soft_wrap=True)

    results = run_conformance(entries, checks, progress=progress)
    console.print(pass_table(results, width=console.width))
    if json_path:
        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=2))
    return not any(r.status in ("fail", "xpass") for r in results)
