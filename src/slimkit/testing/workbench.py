"""The shared machinery of the checks: preparing zoo models, training steps, digits fine-tuning.

Everything expensive is cached per process (one pytest session, one ``slimkit conformance``
run): the trained digits baseline, its fp32 ONNX artifact and report, and each entry's
fine-tuned model and artifact report.

Example:
    >>> model = prepared(entry, ZOO["lstm"])           # built, prepared, two training steps
    >>> base = baseline()                               # the digits CNN, trained once
"""

from __future__ import annotations

import atexit
import copy
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import slimkit as sk
from slimkit.core.batch import call_model, flatten_outputs
from slimkit.core.parametrize import slim_parametrizations
from slimkit.examples import (
    DigitsCNN,
    accuracy_eval,
    optimizer_step,
    set_seed,
    steps_per_epoch,
    train,
)
from slimkit.testing.entry import ConformanceEntry, SampleData
from slimkit.testing.zoo import ZooModel, digits

_CACHE: dict = {}
_TRAIN_STEPS = 2  # zoo models: enough to move weights, steps and observers off their start
_LATENCY_BATCH = 64


def _key(kind: str, entry: ConformanceEntry) -> tuple:
    """A cache key for what ``entry`` produces: two entries that would train or export
    differently never share a cached model, even under one name."""
    import json

    config = json.dumps(entry.config().to_dict(), sort_keys=True)
    return (kind, entry.name, config, entry.finetune_steps, entry.lr,
            repr(sorted(entry.export_kwargs.items())), entry.needs_calibration,
            entry.needs_example_inputs, entry.prepare)


def workdir() -> Path:
    """A temporary folder for this process's artifacts, removed at exit."""
    if "dir" not in _CACHE:
        path = Path(tempfile.mkdtemp(prefix="slimkit-conformance-"))
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        _CACHE["dir"] = path
    return _CACHE["dir"]


# -- preparing -----------------------------------------------------------------------------------

def sample_data(entry: ConformanceEntry, case: ZooModel) -> SampleData:
    """The data ``entry.prepare`` receives for ``case``: only what the entry declared."""
    return SampleData(
        example=case.example() if entry.needs_example_inputs else None,
        calibration=case.calibration() if entry.needs_calibration else None,
    )


def prepare(entry: ConformanceEntry, model: nn.Module, case: ZooModel) -> nn.Module:
    """Apply the entry's technique to ``model`` as the entry says; returns the model."""
    config = entry.config()
    data = sample_data(entry, case)
    if entry.prepare is not None:
        out = entry.prepare(model, config, data)
        if out is not model:
            raise AssertionError(
                f"{entry.name}: prepare must change the model in place and return it "
                f"(got {type(out).__name__})"
            )
        return model
    sk.apply(model, config)
    if entry.needs_calibration:
        sk.calibrate(model, data.calibration, progress=False)
    return model


def scheduler(model: nn.Module) -> sk.Scheduler | None:
    """``sk.Scheduler(model)`` when the model has something to step, else None."""
    if any(hasattr(p, "step") for *_, p in slim_parametrizations(model)):
        return sk.Scheduler(model)
    return None


def outputs(model: nn.Module, inputs: tuple) -> list[torch.Tensor]:
    """The model's output tensors (flattened) on ``inputs``, in eval mode without grad."""
    model.eval()
    with torch.no_grad():
        out = call_model(model, inputs)
    return flatten_outputs(out)


def train_steps(model: nn.Module, case: ZooModel, steps: int = _TRAIN_STEPS) -> None:
    """A few Adam steps towards a fixed random target, stepping the technique's scheduler.

    The loss is generic (any model, any output), because the point is only that the
    technique's state moves as it would in a user's training loop.
    """
    inputs = case.example()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    sched = scheduler(model)
    gen = torch.Generator().manual_seed(7)
    model.train()
    for _ in range(steps):
        out = flatten_outputs(call_model(model, inputs))
        loss = sum(F.mse_loss(t.float(), torch.randn(t.shape, generator=gen)) for t in out)
        optimizer_step(loss, opt, sched)
    model.eval()


def prepared(entry: ConformanceEntry, case: ZooModel, seed: int = 0, steps: int = _TRAIN_STEPS):
    """A fresh zoo model (init ``seed``), prepared by the entry and trained ``steps`` steps."""
    model = case.build(seed)
    prepare(entry, model, case)
    if steps:
        train_steps(model, case, steps)
    return model


def deployable(model: nn.Module) -> nn.Module:
    """What ``sk.export_onnx`` exports: the shared deploy pipeline's stripped copy."""
    from slimkit.export.pipeline import deployable as pipeline_deployable

    return pipeline_deployable(model)


# -- digits ---------------------------------------------------------------------------------------

def baseline() -> nn.Module:
    """The digits CNN trained as BENCHMARKS.md's baseline (seed 0, Adam 1e-3, 20 epochs), once."""
    if "baseline" not in _CACHE:
        set_seed(0)
        model = DigitsCNN()
        train(model, digits(), epochs=20, lr=1e-3, seed=0)
        _CACHE["baseline"] = model
    return _CACHE["baseline"]


def batch_indices(step: int, batch_size: int = 32, seed: int = 0) -> torch.Tensor:
    """The training rows of fine-tuning step ``step``: the same order as ``examples.train``,
    a function of the step alone, so a resumed run sees the batches an uninterrupted one sees."""
    data = digits()
    spe = steps_per_epoch(data, batch_size)
    epoch, i = divmod(step, spe)
    order = torch.randperm(len(data.x_train),
                           generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return order[i * batch_size:(i + 1) * batch_size]


def finetune(model: nn.Module, opt: torch.optim.Optimizer, start: int, stop: int) -> None:
    """Digits cross-entropy steps ``start .. stop - 1``, stepping the technique's scheduler."""
    data = digits()
    sched = scheduler(model)
    model.train()
    for step in range(start, stop):
        idx = batch_indices(step)
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        optimizer_step(loss, opt, sched)
    model.eval()


def optimizer(entry: ConformanceEntry, model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=entry.lr)


def prepared_baseline(entry: ConformanceEntry) -> nn.Module:
    """A copy of the trained baseline, prepared by the entry with the digits data."""
    from slimkit.testing.zoo import ZOO

    return prepare(entry, copy.deepcopy(baseline()), ZOO["cnn"])


def resume_steps(entry: ConformanceEntry) -> int:
    """Steps of the resume check: the fine-tune itself, or 6 for post-training techniques."""
    return entry.finetune_steps or 6


def finetuned(entry: ConformanceEntry) -> nn.Module:
    """The baseline prepared by ``entry`` and fine-tuned ``finetune_steps`` steps (cached).

    The convergence and metric checks measure its artifact; the resume check compares an
    interrupted run with it.
    """
    key = _key("finetuned", entry)
    if key not in _CACHE:
        model = prepared_baseline(entry)
        opt = optimizer(entry, model)
        finetune(model, opt, 0, entry.finetune_steps)
        _CACHE[key] = model
    return _CACHE[key]


def measure(path: Path, latency: bool) -> sk.DeploymentReport:
    """``sk.report`` of a digits artifact: sizes, accuracy in ORT, and optionally latency."""
    data = digits()
    if latency:
        return sk.report(path, data.x_test[:8], eval_fn=accuracy_eval(data),
                         batch_size=_LATENCY_BATCH, threads=1, latency_runs=50, warmup=5,
                         memory=False)
    return sk.report(path, data.x_test[:8], eval_fn=accuracy_eval(data), latency_runs=0,
                     memory=False)


def baseline_artifact() -> Path:
    if "base_path" not in _CACHE:
        _CACHE["base_path"] = sk.export_onnx(baseline(), workdir() / "fp32.onnx",
                                             example_inputs=digits().x_test[:8])
    return _CACHE["base_path"]


def artifact(entry: ConformanceEntry) -> Path:
    """The entry's fine-tuned digits model exported (validated in ORT), once."""
    key = _key("artifact", entry)
    if key not in _CACHE:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in entry.name)
        n = sum(1 for k in _CACHE if k[0] == "artifact")
        _CACHE[key] = sk.export_onnx(finetuned(entry), workdir() / f"{safe}-{n}.onnx",
                                     example_inputs=digits().x_test[:8], **entry.export_kwargs)
    return _CACHE[key]


def reports(entry: ConformanceEntry) -> tuple[sk.DeploymentReport, sk.DeploymentReport]:
    """``(fp32 report, technique report)`` of the digits artifacts (sizes and accuracy; cached)."""
    if "base_report" not in _CACHE:
        _CACHE["base_report"] = measure(baseline_artifact(), latency=False)
    key = _key("report", entry)
    if key not in _CACHE:
        _CACHE[key] = measure(artifact(entry), latency=False)
    return _CACHE["base_report"], _CACHE[key]


def latency_ratio(entry: ConformanceEntry, rounds: int = 3) -> float:
    """fp32 p50 latency / technique p50 latency, each the best of ``rounds`` interleaved
    measurements (the best, because noise from other processes only ever adds time)."""
    base, tech = [], []
    for _ in range(rounds):
        base.append(measure(baseline_artifact(), latency=True).latency["p50_ms"])
        tech.append(measure(artifact(entry), latency=True).latency["p50_ms"])
    return min(base) / min(tech)
