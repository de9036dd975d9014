"""`slimkit run` end to end: the example recipes in short versions, resume after SIGKILL, and a
recipe built from the user's own factories."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from click.testing import CliRunner
from onnx import numpy_helper

from slimkit.cli import main
from slimkit.examples import load_digits_data
from slimkit.export import ort_session

MAX_STEPS = 6  # per training phase: the short version of every example
OUTPUTS = ["model.onnx", "report.json", "report.md", "recipe.yaml", "stages.png",
           "sparsity.png", "layers.png"]


def run_cli(*args) -> str:
    result = CliRunner().invoke(main, ["run", *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def kernels(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer
            if len(t.dims) >= 2}


def initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def ort_accuracy(path: Path) -> float:
    data = load_digits_data()
    logits = ort_session(path).run(None, {"input": data.x_test.numpy()})[0]
    return float((logits.argmax(1) == data.y_test.numpy()).mean())


def drift(out: Path) -> float:
    """||artifact logits - baseline logits|| / ||baseline logits|| on the test set.

    A short run barely moves the weights, so a faithful compression stays close to the
    baseline; an artifact whose weights were quantized to nothing is at ~1.
    """
    x = load_digits_data().x_test.numpy()
    base = ort_session(out / "stages" / "00-baseline.onnx").run(None, {"input": x})[0]
    final = ort_session(out / "model.onnx").run(None, {"input": x})[0]
    return float(np.linalg.norm(final - base) / np.linalg.norm(base))


def check_outputs(out: Path, stages: list[str]) -> dict:
    for name in OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in ("stages.png", "sparsity.png", "layers.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in report["stages"]] == ["baseline", *stages]
    assert all(r["evaluated_on"] == "ONNX Runtime artifact" for r in report["stages"])
    # Short version: the baseline and every training stage ran exactly MAX_STEPS steps.
    assert all(r["steps"] == MAX_STEPS for r in report["stages"])
    assert len(list((out / "checkpoints").glob("*.pt"))) == len(stages) + 1
    # The accuracy in the report is the artifact's, measured again here in ONNX Runtime.
    assert report["final"]["metrics"]["accuracy"] == ort_accuracy(out / "model.onnx")
    assert report["stages"][-1]["metrics"] == report["final"]["metrics"]
    md = (out / "report.md").read_text()
    assert all(f"| {s} |" in md for s in stages) and "![stages.png](stages.png)" in md
    assert "zipped size (above 1: the artifact is smaller)" in md   # not raw keys
    return report


@pytest.fixture(scope="module")
def pcqat_run(tmp_path_factory):
    """The pcqat example, short and uninterrupted: also the reference of the resume test."""
    out = tmp_path_factory.mktemp("pcqat")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_cli("--example", "pcqat", "--out", str(out), "--max-steps", str(MAX_STEPS))
    finally:
        torch.set_num_threads(threads)
    return out


def test_prune_80_example(tmp_path):
    run_cli("--example", "prune-80", "--out", str(tmp_path), "--max-steps", str(MAX_STEPS))
    report = check_outputs(tmp_path, ["prune"])
    for name, w in kernels(tmp_path / "model.onnx").items():
        assert abs(float((w == 0).mean()) - 0.8) < 2e-3, name  # per-layer rounding of 80%
    assert report["stages"][0]["sparsity"] == 0.0
    assert report["baseline_over_final"]["zipped_bytes"] > 3.0  # 80% zeros zip ~3.3-3.9x


def test_cluster_16_example(tmp_path):
    run_cli("--example", "cluster-16", "--out", str(tmp_path), "--max-steps", str(MAX_STEPS))
    report = check_outputs(tmp_path, ["cluster"])
    layers = report["final"]["layers"]
    assert len(layers) == 4 and all(layer["unique"] <= 16 for layer in layers)
    # Compact export: uint8 indices + float codebooks are stored, not float kernels.
    dtypes = {a.dtype for a in kernels(tmp_path / "model.onnx").values()}
    assert dtypes == {np.dtype(np.uint8)}
    assert report["baseline_over_final"]["raw_bytes"] > 3.5  # uint8 vs fp32: at most 4x
    assert drift(tmp_path) < 0.5  # measured 0.28: 16 values per layer of a 6-step baseline


def test_qat_int8_example(tmp_path):
    run_cli("--example", "qat-int8", "--out", str(tmp_path), "--max-steps", str(MAX_STEPS))
    report = check_outputs(tmp_path, ["qat"])
    dtypes = {a.dtype for a in kernels(tmp_path / "model.onnx").values()}
    assert dtypes == {np.dtype(np.int8)}
    assert report["baseline_over_final"]["raw_bytes"] > 3.5  # int8 vs fp32: at most 4x
    assert drift(tmp_path) < 0.3  # measured 0.15 (int8 weights and activations)


def test_pcqat_example(pcqat_run):
    report = check_outputs(pcqat_run, ["prune", "cluster", "qat"])
    ws = kernels(pcqat_run / "model.onnx")
    assert {a.dtype for a in ws.values()} == {np.dtype(np.int8)}
    for name, w in ws.items():
        assert abs(float((w == 0).mean()) - 0.8) < 2e-3, name  # sparsity survived 2 stages
        # One int8 scale per layer: each shared value is one integer (zero among the 16).
        assert len(np.unique(w)) <= 16, (name, len(np.unique(w)))
    cluster_row = report["stages"][2]
    assert all(layer["unique"] <= 16 for layer in cluster_row["layers"])
    assert report["baseline_over_final"]["zipped_bytes"] > 8.0


def test_killed_run_resumes_and_ends_with_the_same_artifact(pcqat_run, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "slimkit.cli", "run", "--example", "pcqat", "--out", str(out),
           "--max-steps", str(MAX_STEPS)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first_stage = out / "checkpoints" / "01-prune.pt"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not first_stage.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no stage checkpoint within 240 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # Killed between stages: the first stage is saved, the next one and the artifact are not.
    assert not (out / "checkpoints" / "02-cluster.pt").exists()
    assert not (out / "model.onnx").exists()

    # Restarted with the same command (in this process: a second interpreter start would
    # only add time); it loads 01-prune.pt and runs cluster and qat.
    output = run_cli(*cmd[cmd.index("run") + 1:])
    assert "resuming pcqat after phase 1 (prune)" in " ".join(output.split())
    report = json.loads((out / "report.json").read_text())
    assert report["resumed_from_phase"] == 2
    mine, reference = initializers(out / "model.onnx"), initializers(pcqat_run / "model.onnx")
    assert mine.keys() == reference.keys()
    for name in reference:
        assert np.array_equal(mine[name], reference[name]), name
    ref_report = json.loads((pcqat_run / "report.json").read_text())
    assert [r["metrics"] for r in report["stages"]] == [r["metrics"] for r in ref_report["stages"]]


def test_a_different_run_in_the_same_folder_is_refused(pcqat_run, tmp_path):
    # Same recipe, other --max-steps: the folder's checkpoints are not this run's.
    result = CliRunner().invoke(main, ["run", "--example", "pcqat", "--out", str(pcqat_run),
                                       "--max-steps", str(MAX_STEPS + 1)])
    assert result.exit_code == 2 and "different recipe or --max-steps" in result.output


USER_MODULE = '''
import torch
import torch.nn as nn
import torch.nn.functional as F

CALLS = []
_gen = torch.Generator().manual_seed(0)
X = torch.randn(96, 6, generator=_gen)
Y = (X @ torch.randn(6, 3, generator=_gen)).argmax(1)


def make_model():
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))


def train_loader():
    data = torch.utils.data.TensorDataset(X, Y)
    return torch.utils.data.DataLoader(data, batch_size=16, shuffle=True)


def evaluate(predict):
    return {"accuracy": float((predict(X).argmax(1) == Y).float().mean())}


def example_inputs():
    return X[:4]


def loss(outputs, targets):
    CALLS.append(len(targets))
    return F.cross_entropy(outputs, targets)


def nan_loss(outputs, targets):
    return F.cross_entropy(outputs, targets) * float("nan")
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module of the user's factories, importable as h2_user_task (a fresh import per test)."""
    (tmp_path / "h2_user_task.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "h2_user_task", raising=False)
    yield
    sys.modules.pop("h2_user_task", None)


USER_DATA = {"train_loader": "h2_user_task:train_loader", "eval": "h2_user_task:evaluate",
             "example_inputs": "h2_user_task:example_inputs", "loss": "h2_user_task:loss"}


def test_user_factory_recipe(tmp_path, user_module):
    recipe = {
        "name": "user-prune",
        "model": {"factory": "h2_user_task:make_model"},
        "data": USER_DATA,
        "baseline": {"steps": 60, "lr": "1e-2"},
        "evaluate": "stripped",
        "report": {"latency_runs": 5},
        "stages": [{"name": "prune", "technique": "magnitude-pruning", "epochs": 2,
                    "lr": 1e-3, "config": {"schedule": 0.5}, "ignore": ["2"]},
                   # post-training: no training, calibrated on 2 training batches
                   {"name": "ptq", "technique": "quantization", "calibration_batches": 2}],
    }
    path = tmp_path / "user.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    run_cli(str(path), "--out", str(out))
    import h2_user_task

    # The user's loss ran every step: 60 baseline steps + 2 epochs of 96/16 batches.
    assert len(h2_user_task.CALLS) == 60 + 2 * 6
    report = json.loads((out / "report.json").read_text())
    rows = report["stages"]
    assert [r["evaluated_on"] for r in rows] == ["stripped torch model"] * 3
    assert rows[0]["metrics"]["accuracy"] > 0.8  # a linear rule, learnt in 60 steps
    assert [r["steps"] for r in rows] == [60, 12, 0]
    ws = kernels(out / "model.onnx")
    assert {w.dtype for w in ws.values()} == {np.dtype(np.int8)}
    # ignore=["2"] kept the last Linear dense; the first one is pruned to 50% and stays so
    # through int8 quantization (zero maps to zero).
    sparsities = sorted(float((w == 0).mean()) for w in ws.values())
    assert sparsities[1] == 0.5 and sparsities[0] < 0.05
    predict = ort_session(out / "model.onnx")
    logits = predict.run(None, {predict.get_inputs()[0].name: h2_user_task.X.numpy()})[0]
    acc = float((logits.argmax(1) == h2_user_task.Y.numpy()).mean())
    # 1e-6: the eval function averages in float32; one sample of 96 is 0.0104.
    assert abs(report["final"]["metrics"]["accuracy"] - acc) < 1e-6
    assert not list(out.glob("stages/*.onnx"))  # stripped evaluation exports only the artifact


def test_a_stage_the_model_refuses_is_a_recipe_error_at_its_location(tmp_path, user_module):
    import h2_user_task

    torch.manual_seed(1)
    start = h2_user_task.make_model().state_dict()
    torch.save(start, tmp_path / "start.pt")
    recipe = {"model": {"factory": "h2_user_task:make_model",
                        "checkpoint": str(tmp_path / "start.pt")},
              "data": USER_DATA, "evaluate": "stripped",
              "stages": [{"technique": "magnitude-pruning", "steps": 2,
                          "targets": ["nothing*"]}]}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(out)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "stages[0]: targets entry 'nothing*' matches no module" in text
    # Refused before the baseline phase: nothing was trained or saved, no artifact.
    assert not list((out / "checkpoints").glob("*.pt"))
    assert not (out / "model.onnx").exists()


def test_a_run_that_fails_exits_1(tmp_path, user_module):
    recipe = {"model": {"factory": "h2_user_task:make_model"},
              "data": {**USER_DATA, "loss": "h2_user_task:nan_loss"}, "evaluate": "stripped",
              "stages": [{"technique": "magnitude-pruning", "steps": 3}]}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert isinstance(result.exception, RuntimeError)
    assert "the loss is nan at step 0" in str(result.exception)
    assert not (tmp_path / "out" / "checkpoints" / "01-magnitude-pruning.pt").exists()


def test_channel_pruning_stage_gets_the_tasks_example_inputs(tmp_path):
    recipe = {"name": "channels-50", "task": "digits", "seed": 0,
              "stages": [{"name": "channels", "technique": "channel-pruning", "epochs": 1,
                          "lr": 1.0e-4, "config": {"ratio": 0.5}}]}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    run_cli(str(path), "--out", str(out), "--max-steps", str(MAX_STEPS))
    check_outputs(out, ["channels"])
    shapes = {name: w.shape for name, w in kernels(out / "model.onnx").items()}
    # Half of each conv's output channels are gone; the classifier keeps its 10 outputs.
    convs = sorted(s for s in shapes.values() if len(s) == 4)
    assert convs == [(16, 1, 3, 3), (32, 16, 3, 3)], shapes
