"""The README's example runs as written, and its Quickstart matches what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import slimkit as sk
from slimkit.examples import set_seed

ROOT = Path(__file__).resolve().parents[2]


def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, f"README.md has no '## {title}' section"
    return match[1]


def test_readme_example_runs_and_prunes_to_80_percent(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", _section("Example"), re.S)
    assert len(blocks) == 1
    code = blocks[0]
    assert len(code.strip().splitlines()) <= 10
    monkeypatch.chdir(tmp_path)
    set_seed(0)  # the example leaves the seed to the reader; the test fixes it
    namespace: dict = {}
    exec(compile(code, "README.md#example", "exec"), namespace)  # noqa: S102 (the README's own code)

    # What the example made: a validated ONNX file, 80% sparse, that still classifies digits.
    rep = sk.report(tmp_path / "pruned.onnx", namespace["data"].x_test[:8],
                    eval_fn=namespace["accuracy_eval"](namespace["data"]), latency_runs=0,
                    memory=False)
    assert abs(rep.sparsity - 0.8) < 0.001            # per-layer 80%, rounded per layer
    assert rep.metrics["accuracy"] > 0.88             # 5 + 3 epochs, seed 0: about 0.94
    assert rep.zipped_bytes * 3.5 < rep.raw_bytes     # raw / zipped: ~4.3 at 80% zeros, ~1.1 dense


def test_quickstart_commands_match_ci():
    quick = _section("Quickstart")
    commands = re.findall(r"```bash\n(.*?)\n```", quick, re.S)
    assert commands[0] == ("python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt "
                           "-e . && .venv/bin/slimkit demo")
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert commands[1] == ci


def test_install_section_pins_torch_with_the_constraints():
    install = _section("Install")
    pip_lines = [line for line in install.splitlines() if line.startswith("pip install")]
    assert pip_lines and all("-c constraints.txt" in line for line in pip_lines)
    assert "slimkit demo --quick" in install
