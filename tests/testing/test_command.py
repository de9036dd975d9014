"""``slimkit conformance``: the pass table, exit codes and entries from a contributor's file."""

import json

from click.testing import CliRunner

from slimkit.cli import main

FAILING = '''
import slimkit as sk
from slimkit.testing import ConformanceEntry

ENTRIES = [
    ConformanceEntry("magnitude-pruning", id="pruning-ok",
                     config=lambda: sk.MagnitudePruningConfig(0.5), invalid={"scope": "x"}),
    # "overrides" accepts any dict of module names: declaring {} as invalid must fail.
    ConformanceEntry("channel-pruning", id="pruning-bad-claim",
                     config=lambda: sk.ChannelPruningConfig(0.5), invalid={"overrides": {}}),
]
'''


def test_builtin_config_checks_print_a_pass_table_and_exit_0(tmp_path):
    out = tmp_path / "results.json"
    result = CliRunner().invoke(main, ["conformance", "--check", "config", "--check", "json",
                                       "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "slimkit conformance" in result.output
    from slimkit.testing.builtin import BUILTIN_ENTRIES

    for name in ("magnitude-pruning", "channel-pruning", "weight-clustering", "quantization",
                 "quantization-dynamic", "qat", "sparsegpt", "wanda", "smoothquant"):
        assert name in result.output
    rows = json.loads(out.read_text())
    # Two checks per built-in entry (9 entries: every registered technique's rows).
    assert len(BUILTIN_ENTRIES) == 9
    assert len(rows) == 2 * len(BUILTIN_ENTRIES) and {r["status"] for r in rows} == {"pass"}


def test_a_failing_entry_from_a_file_exits_1(tmp_path):
    path = tmp_path / "entries.py"
    path.write_text(FAILING)
    result = CliRunner().invoke(main, ["conformance", "--entries", str(path), "--check", "config"])
    assert result.exit_code == 1
    assert "pruning-bad-claim [config]: ChannelPruningConfig(overrides={}) was accepted" \
        in result.output
    assert "pruning-ok" in result.output


def test_bad_entries_and_checks_exit_2(tmp_path):
    result = CliRunner().invoke(main, ["conformance", "--entries", str(tmp_path / "none.py")])
    assert result.exit_code == 2 and "no such file" in result.output
    result = CliRunner().invoke(main, ["conformance", "--entries", "json:dumps"])
    assert result.exit_code == 2 and "no list of ConformanceEntry" in result.output
    result = CliRunner().invoke(main, ["conformance", "--check", "speed"])
    assert result.exit_code == 2 and "unknown check(s) ['speed']" in result.output


def test_conformance_runs_from_any_directory(tmp_path, monkeypatch):
    # The built-in entries' docs pages are found through slimkit's checkout, not the cwd.
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["conformance", "--check", "docs"])
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.output


def test_pass_table_fits_80_columns():
    from rich.console import Console

    from slimkit.testing.builtin import BUILTIN_ENTRIES
    from slimkit.testing.checks import CHECKS, MODEL_CHECKS
    from slimkit.testing.suite import Result, pass_table

    results = [Result(e.name, c, m, "xfail" if m == "lstm" else "pass", "", 0.0)
               for e in BUILTIN_ENTRIES for c in CHECKS
               for m in (e.models if c in MODEL_CHECKS else (None,))]
    console = Console(record=True, width=80)
    console.print(pass_table(results, width=80))
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    # every check's column header and every entry is on screen, not cut to "…"
    text = "\n".join(lines)
    assert "…" not in text
    assert all(c in text for c in CHECKS) and all(e.name in text for e in BUILTIN_ENTRIES)
    assert "magnitude-pruning: xfail on lstm (every model check)" in text


def test_new_technique_names_the_extra_that_brings_pytest(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pytest" else real(name, *a))
    result = CliRunner().invoke(main, ["new-technique", "my-noise", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "pip install 'slimkit[test]'" in result.output
