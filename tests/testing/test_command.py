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
