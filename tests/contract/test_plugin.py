"""A technique written outside slimkit plugs in without any edit to slimkit.

The plugin (plugin_source.py, copied into a temporary folder with a dist-info that declares
its ``slimkit.techniques`` entry point, the way pip installs a third-party package) adds its
own stage, a training statistic, a DDP sync rule, a calibration step and a CLI command. It
must be discovered, pass the conformance kit, run in a recipe, train on two DDP ranks with its
state synced by its own rule, and export.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import slimkit as sk
from slimkit.core import registry
from slimkit.examples import DigitsCNN, load_digits_data
from slimkit.integrations import training_stats

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    pkg = site / "sk_clip_plugin"
    pkg.mkdir()
    docs = site / "docs"
    docs.mkdir()
    for page in ("overview.md", "guide.md"):
        (docs / page).write_text(f"# input-clip {page}\n\nA plugin technique for the tests.\n")
    cell = {"cell_type": "markdown", "id": "intro", "metadata": {},
            "source": ["# input-clip\n", "A plugin technique for the tests."]}
    (docs / "notebook.ipynb").write_text(json.dumps(
        {"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    source = (HERE / "plugin_source.py").read_text().replace(
        'DOCS = ""', f"DOCS = {str(docs)!r}")
    (pkg / "__init__.py").write_text(source)
    info = site / "sk_clip_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sk-clip-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[slimkit.techniques]\ninput-clip = sk_clip_plugin:TECHNIQUE\n")
    (info / "RECORD").write_text("")
    sys.path.insert(0, str(site))
    registry.reload_entry_points()
    yield site
    sys.path.remove(str(site))
    registry._TECHNIQUES.pop("input-clip", None)
    sys.modules.pop("sk_clip_plugin", None)


def _env(site: Path) -> dict:
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def test_discovered_through_its_entry_point(plugin_site):
    tech = sk.get_technique("input-clip")
    assert tech.source == "sk_clip_plugin:TECHNIQUE"
    assert "input-clip" in [t.name for t in sk.techniques()]
    order = sorted(sk.authoring.stages(), key=sk.authoring.stage_order)
    assert order.index("cluster") < order.index("clip-round") < order.index("quant")


def test_its_stage_stacks_between_the_built_in_ones(plugin_site):
    from sk_clip_plugin import InputClipConfig, RoundWeight

    data = load_digits_data()
    model = DigitsCNN()
    sk.quantize(model, sk.QuantizationConfig(mode="weight_only"))
    sk.apply(model, InputClipConfig(), calibration=data.x_train[:64])
    sk.prune(model, sk.MagnitudePruningConfig(0.5))
    stack = [type(p).__name__ for p in model.fc1.parametrizations.weight]
    assert stack == ["PruningMask", RoundWeight.__name__, "WeightFakeQuant"]


def test_statistics_calibration_strip_and_export(plugin_site, tmp_path):
    import onnx
    from sk_clip_plugin import InputClipConfig

    data = load_digits_data()
    model = DigitsCNN()
    sk.apply(model, InputClipConfig(), calibration=data.x_train[:64])
    stats = training_stats(model, per_layer=True)
    peak = float(data.x_train[:64].abs().amax())
    assert stats["slimkit/clip/rounded_tensors"] == 4.0
    assert stats["slimkit/clip/peak"] >= peak  # the conv inputs grow past the image range
    assert stats["slimkit/clip/peak/conv1._sk_clip"] == pytest.approx(peak, rel=1e-6)
    x = data.x_test[:8]
    model.eval()
    with torch.no_grad():
        before = model(x)
    sk.strip(model)
    with torch.no_grad():
        assert torch.equal(model(x), before)  # the rounding baked, the clips kept
    assert [r["technique"] for r in sk.records(model)] == ["input-clip"]
    path = sk.export_onnx(model, tmp_path / "clip.onnx", example_inputs=x)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["input-clip"] == "1 record(s)"
    saved = tmp_path / "stripped.pt"
    sk.save(model, saved)
    again = sk.load(saved, DigitsCNN())
    again.eval()
    with torch.no_grad():
        assert torch.equal(again(x), before)


def test_passes_the_conformance_kit(plugin_site):
    from slimkit.testing import run_conformance

    entries = sk.get_technique("input-clip").conformance_entries()
    results = run_conformance(entries)
    failed = [(r.check, r.model, r.note) for r in results if r.status not in ("pass", "skip")]
    assert not failed, failed
    assert sum(r.status == "pass" for r in results) >= 12


def test_cli_command_and_recipe(plugin_site, tmp_path):
    env = _env(plugin_site)
    cli = [sys.executable, "-c", "from slimkit.cli import main; main()"]
    out = subprocess.run([*cli, "clip-stages"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "cluster < clip-round < quant" in out.stdout
    recipe = tmp_path / "clip.yaml"
    recipe.write_text(textwrap.dedent("""\
        name: clip
        task: digits
        seed: 0
        baseline: {epochs: 1}
        stages:
          - name: clip
            technique: input-clip
            epochs: 1
            calibration_batches: 2
            config: {margin: 2.0}
        """))
    run = subprocess.run([*cli, "run", str(recipe), "--out", str(tmp_path / "run"),
                          "--max-steps", "3"], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert (tmp_path / "run" / "model.onnx").is_file()
    assert report


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with the gloo backend is not available")
def test_two_ddp_ranks_sync_its_state_by_its_own_rule(plugin_site, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", str(HERE / "ddp_plugin_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=_env(plugin_site))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    for r in ranks:
        assert r["unsynced"] == []  # every parameter and buffer identical on both ranks
    # The image-input clip saw both shards: its peak is the larger shard's maximum.
    both = max(r["shard_max"] for r in ranks)
    assert ranks[0]["peaks"]["conv1._sk_clip"] == pytest.approx(both, rel=1e-6)
    assert ranks[0]["stats"] == ranks[1]["stats"]
    _ = shutil  # the site folder is removed with tmp_path
