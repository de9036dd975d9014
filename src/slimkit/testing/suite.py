"""Turn conformance entries into pytest tests, or run them directly for a pass table.

In a test file (yours or ours), one line generates every check of every entry as its own
parametrized test, with ids such as ``magnitude-pruning-strip-lstm``:

Example:
    >>> from slimkit.testing import ConformanceEntry, conformance_tests
    >>> ENTRIES = [ConformanceEntry("my-noise", config=MyNoiseConfig, invalid={"std": -1.0})]
    >>> globals().update(conformance_tests(ENTRIES))
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from slimkit.testing.checks import CheckSkipped, ConformanceError, cases, run_check


def _id(case) -> str:
    entry, check, model = case
    return f"{entry.name}-{check}" + (f"-{model}" if model else "")


def conformance_tests(entries, checks=None, name: str = "test_conformance") -> dict:
    """``{name: test function}``: a pytest test parametrized over every (entry, check, model).

    Put the result in a test module's globals. ``checks`` limits the run to some check
    names (default: all of :data:`slimkit.testing.CHECKS`).
    """
    import pytest

    matrix = cases(list(entries), checks)

    params = []
    for case in matrix:
        entry, check, model = case
        reason = entry.known_failure(check, model)
        marks = [pytest.mark.xfail(reason=reason, strict=True, raises=ConformanceError)] if reason else []
        params.append(pytest.param(case, id=_id(case), marks=marks))

    @pytest.mark.parametrize("case", params)
    def test_conformance(case):
        entry, check, model = case
        try:
            run_check(entry, check, model)
        except CheckSkipped as e:
            pytest.skip(str(e))

    test_conformance.__name__ = name
    return {name: test_conformance}


@dataclass
class Result:
    """The outcome of one check: ``status`` is "pass", "fail", "skip", "xfail" (a declared
    known failure that failed) or "xpass" (a declared known failure that passed: a fix)."""

    entry: str
    check: str
    model: str | None
    status: str
    note: str
    seconds: float


def run_conformance(entries, checks=None, progress=None) -> list[Result]:
    """Run every check of every entry outside pytest; returns the results (never raises for a
    failing check). ``progress(result)`` is called after each one."""
    results = []
    for entry, check, model in cases(list(entries), checks):
        t0 = time.perf_counter()
        try:
            status, note = "pass", run_check(entry, check, model)
        except CheckSkipped as e:
            status, note = "skip", str(e)
        except ConformanceError as e:
            status, note = "fail", str(e)
        except Exception as e:  # a crash inside a technique is a failure of that check
            status, note = "fail", f"{type(e).__name__}: {e}"
        reason = entry.known_failure(check, model)
        if reason and status == "fail":
            status, note = "xfail", f"{reason} ({note})"
        elif reason and status == "pass":
            status = "xpass"
        result = Result(entry.name, check, model, status, note, time.perf_counter() - t0)
        results.append(result)
        if progress is not None:
            progress(result)
    return results


def pass_table(results: list[Result], width: int | None = None):
    """The pass table as a rich renderable: one row per entry, one column per check.

    Per-model checks show ``passed/run``; the models that did not pass are listed under the
    table (cells stay short). With ``width`` (a terminal's columns) the checks are split over
    as many tables as it takes for each to fit, so the table reads at 80 columns.
    """
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    checks = list(dict.fromkeys(r.check for r in results))
    rows: dict[str, dict[str, list[Result]]] = {}
    for r in results:
        rows.setdefault(r.entry, {}).setdefault(r.check, []).append(r)
    name_width = max([len("technique"), *(len(e) for e in rows)])
    parts, chunk, used = [], [], name_width + 4
    for c in checks:
        cell = max(len(c), 5) + 3          # "11/12" at most, plus padding and a border
        if chunk and width is not None and used + cell > width:
            parts.append(chunk)
            chunk, used = [], name_width + 4
        chunk.append(c)
        used += cell
    parts.append(chunk)

    tables = []
    for i, part in enumerate(parts):
        title = "slimkit conformance" + (f" ({i + 1}/{len(parts)})" if len(parts) > 1 else "")
        table = Table(title=title, title_justify="left")
        table.add_column("technique", no_wrap=True)
        for c in part:
            table.add_column(c, no_wrap=True)
        for entry, by_check in rows.items():
            table.add_row(escape(entry), *(_cell(by_check.get(c, [])) for c in part))
        tables.append(table)
    # One line per (entry, outcome, model), naming its checks: short enough for 80 columns.
    grouped: dict[tuple, list[str]] = {}
    for r in results:
        if r.model is not None and r.status not in ("pass", "skip"):
            grouped.setdefault((r.entry, r.status, r.model), []).append(r.check)
    model_checks = {e: {c for c, rs in by.items() if rs[0].model is not None}
                    for e, by in rows.items()}
    notes = [f"{escape(e)}: {_styled(st)} on {m} "
             f"({'every model check' if set(cs) == model_checks[e] else ', '.join(cs)})"
             for (e, st, m), cs in grouped.items()]
    if notes:
        tables.append(Text.from_markup("not passed on a model:\n  " + "\n  ".join(notes)))
    return Group(*tables)


def _styled(status: str) -> str:
    return {"pass": "[green]pass[/green]", "fail": "[red]FAIL[/red]",
            "xfail": "[yellow]xfail[/yellow]", "xpass": "[red]XPASS[/red]"}[status]


def _cell(rs: list[Result]) -> str:
    if not rs:
        return "-"
    ran = [r for r in rs if r.status != "skip"]
    if not ran:
        return "[dim]skip[/dim]"
    if rs[0].model is None:
        return _styled(ran[0].status)
    passed = sum(r.status == "pass" for r in ran)
    text = f"{passed}/{len(ran)}"
    if passed == len(ran):
        return f"[green]{text}[/green]"
    bad = any(r.status in ("fail", "xpass") for r in ran)
    color = "red" if bad else "yellow"
    return f"[{color}]{text}[/{color}]"
