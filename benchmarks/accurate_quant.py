"""Accuracy-preserving quantization and distillation, side by side (issue 15).

Models trained here (Adam, batch 32):
- the digits CNN (../shared/BENCHMARKS.md: 20 epochs, lr 1e-3);
- a MobileNetV2-style depthwise-separable CNN (inverted residual blocks, BatchNorm, ReLU6) on
  the digits images resized to 32x32 (bilinear), ``--mobile-epochs`` epochs, lr 3e-3.
Rows, every accuracy read from the ONNX Runtime artifact (test set, 360 images):
- int8 per-tensor static (U8S8): min-max vs CLE vs CLE + bias correction (empirical / BN);
  ORT ``quantize_static`` per-tensor (QDQ, U8S8, min-max) on the same fp32 ONNX file;
- W4A8 / W3A8 per-channel: round-to-nearest vs AdaRound (256 calibration images), plus
  W4A16 (weight-only) AdaRound on the digits CNN; AIMET's published ResNet-18 figure as
  context only;
- 4-bit QAT (W4A8, 5 epochs, lr 1e-4): fixed ranges vs learned step sizes (LSQ);
- 80% per-layer pruning and the standard PCQAT recipe (collaborative_digits.py) with and
  without distillation from the fp32 model (logit KL, temperature 4, weight 0.7), seeds 0-2,
  with the fine-tune time per epoch paired against the same fine-tune without distillation.

    python benchmarks/accurate_quant.py          # prints tables, writes JSON
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

import slimkit as sk
from common import summary, write_results  # noqa: E402  (benchmarks/ is on sys.path)
from slimkit.core.registry import register
from slimkit.distill import Distillation
from slimkit.examples import DigitsCNN, DigitsData, load_digits_data, set_seed, steps_per_epoch
from slimkit.examples.digits import optimizer_step
from slimkit.examples.models import InvertedResidual  # the same block as MobileNetV2Style's
from slimkit.export import ort_session
from slimkit.techniques.quantization import AdaRoundConfig
from slimkit.techniques.quantization.api import ADAROUND_TECHNIQUE

register(ADAROUND_TECHNIQUE)  # until the entry point is added

AIMET = {"model": "ResNet-18 ImageNet (AIMET model zoo, published)", "fp32": 69.68,
         "adaround_w4a8": 68.55}
DISTILL = {"temperature": 4.0, "weight": 0.7, "cache_teacher": True}


class MobileNetV2Digits(nn.Module):
    """MobileNetV2-style: stem conv, six inverted residual blocks, 1x1 head, pool, linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU6())
        cfg = [(16, 16, 1, 1), (16, 24, 2, 4), (24, 24, 1, 4), (24, 32, 2, 4), (32, 32, 1, 4),
               (32, 64, 2, 4)]
        self.blocks = nn.Sequential(*[InvertedResidual(*c) for c in cfg])
        self.head = nn.Sequential(nn.Conv2d(64, 128, 1, bias=False), nn.BatchNorm2d(128),
                                  nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def resized(data: DigitsData, size: int = 32) -> DigitsData:
    def up(x):
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return DigitsData(up(data.x_train), data.y_train, up(data.x_test), data.y_test)


def fit(model, data, epochs, lr, seed, scheduler=None, distill=None) -> list[float]:
    """Adam + cross-entropy (the digits loop), with the distillation loss when given."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    return fit_with(model, data, opt, range(epochs), seed, scheduler, distill)


def fit_with(model, data, opt, epochs, seed, scheduler=None, distill=None) -> list[float]:
    n, steps, times = len(data.x_train), steps_per_epoch(data), []
    model.train()
    for epoch in epochs:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        t0 = time.perf_counter()
        for i in range(steps):
            idx = order[i * 32:(i + 1) * 32]
            x, y = data.x_train[idx], data.y_train[idx]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            if distill is not None:
                loss = distill(x, logits, loss)
            optimizer_step(loss, opt, scheduler)
        times.append(time.perf_counter() - t0)
    model.eval()
    return times


def ort_accuracy(path: Path, data: DigitsData) -> float:
    sess = ort_session(path)
    logits = sess.run(None, {sess.get_inputs()[0].name: data.x_test.numpy()})[0]
    return float((logits.argmax(1) == data.y_test.numpy()).mean())


VALIDATION_FAILURES: list[dict] = []


def export_acc(model, data, path: Path, compact: bool = False) -> float:
    """Export (validated in ORT against torch) and read the artifact's accuracy. A model whose
    ORT outputs differ from torch beyond the export tolerance is exported unvalidated and
    recorded in VALIDATION_FAILURES (the accuracy is still the artifact's)."""
    try:
        sk.export_onnx(copy.deepcopy(model), path, example_inputs=data.x_test[:8],
                       compact=compact)
    except sk.ExportValidationError as e:
        VALIDATION_FAILURES.append({"file": path.name, "error": str(e)})
        print(f"  validation failed for {path.name}: {e}", flush=True)
        sk.export_onnx(model, path, example_inputs=data.x_test[:8], compact=compact,
                       validate=False)
    return ort_accuracy(path, data)


def ort_static_per_tensor(fp32: Path, out: Path, calib: torch.Tensor) -> Path:
    """ORT's quantize_static, per-tensor weights, QDQ, U8S8, min-max calibration."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    batches = [{"input": calib[i:i + 32].numpy()} for i in range(0, len(calib), 32)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            return next(self.it, None)

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre))
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=False, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return out


def quantized(model, cfg, calib):
    m = copy.deepcopy(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        sk.quantize(m, cfg, calibration=calib, progress=False)
        seconds = time.perf_counter() - t0
    notes = sorted({str(w.message)[:300] for w in caught if "slimkit" in str(w.message)})
    return m, seconds, notes


def ptq_rows(name, model, data, folder: Path) -> list[dict]:
    calib = data.x_train[:256]
    fp32_path = folder / f"{name}-fp32.onnx"
    fp32 = export_acc(copy.deepcopy(model), data, fp32_path)
    rows = [{"model": name, "group": "fp32", "variant": "fp32", "accuracy": fp32}]
    static = {
        "int8 per-channel min-max (slimkit default)": sk.QuantizationConfig(),
        "int8 per-tensor min-max": sk.QuantizationConfig(per_channel=False),
        "int8 per-tensor CLE": sk.QuantizationConfig(per_channel=False, equalize=True),
        "int8 per-tensor CLE + BC (empirical)": sk.QuantizationConfig(
            per_channel=False, equalize=True, bias_correction="empirical"),
        "int8 per-tensor CLE + BC (BN, data-free)": sk.QuantizationConfig(
            per_channel=False, equalize=True, bias_correction="bn"),
    }
    for label, cfg in static.items():
        m, seconds, notes = quantized(model, cfg, calib)
        acc = export_acc(m, data, folder / f"{name}-{len(rows)}.onnx")
        rows.append({"model": name, "group": "int8 per-tensor", "variant": label,
                     "accuracy": acc, "seconds": seconds, "warnings": notes})
    ort = ort_static_per_tensor(fp32_path, folder / f"{name}-ort.onnx", calib)
    rows.append({"model": name, "group": "int8 per-tensor",
                 "variant": "ORT quantize_static per-tensor (U8S8, min-max)",
                 "accuracy": ort_accuracy(ort, data)})
    # The MobileNet has 19 layers on 32x32 inputs: 300 steps per layer keep it in minutes here.
    steps = 1000 if name == "digits-cnn" else 300
    low = [(f"W{b}A8 per-channel {r}", AdaRoundConfig(weight_bits=b, rounding=r,
                                                      iterations=steps))
           for b in (4, 3) for r in ("nearest", "adaround")]
    if name == "digits-cnn":
        low += [(f"W4A16 per-channel {r}", AdaRoundConfig(mode="weight_only", weight_bits=4,
                                                          rounding=r))
                for r in ("nearest", "adaround")]
    for label, cfg in low:
        m, seconds, notes = quantized(model, cfg, calib)
        acc = export_acc(m, data, folder / f"{name}-{len(rows)}.onnx")
        rows.append({"model": name, "group": "low-bit weights", "variant": label,
                     "accuracy": acc, "seconds": seconds, "warnings": notes})
    for r in rows:
        r["drop_points"] = 100 * (fp32 - r["accuracy"])
        print(f"  {name} | {r['variant']}: {r['accuracy']:.4f} ({r['drop_points']:.2f} pt)",
              flush=True)
    return rows


def qat_rows(model, data, folder: Path, epochs: int = 5) -> list[dict]:
    spe = steps_per_epoch(data)
    rows = []
    configs = {"W4A8 QAT fixed ranges (min-max weights, observers frozen at epoch 3)":
               sk.QATConfig(weight_bits=4, freeze_observers_step=3 * spe),
               "W4A8 QAT learned ranges (LSQ)": sk.QATConfig(weight_bits=4, learn_ranges=True)}
    fp32 = ort_accuracy(folder / "digits-cnn-fp32.onnx", data)
    for label, cfg in configs.items():
        m = copy.deepcopy(model)
        sk.quantize(m, cfg, calibration=data.calibration, progress=False)
        times = fit(m, data, epochs, 1e-4, seed=0, scheduler=sk.Scheduler(m))
        acc = export_acc(m, data, folder / f"qat-{len(rows)}.onnx")
        rows.append({"model": "digits-cnn", "group": "4-bit QAT", "variant": label,
                     "accuracy": acc, "drop_points": 100 * (fp32 - acc),
                     "seconds_per_epoch": statistics.median(times)})
        print(f"  {label}: {acc:.4f}", flush=True)
    return rows


def distill_seed(seed: int, data, folder: Path) -> dict:
    """80% pruning and PCQAT, each with and without distillation, from one baseline.

    Every fine-tune epoch with distillation is paired with the same epoch without it (two
    copies that advance in lockstep), so their time ratio sees the same machine load."""
    spe = steps_per_epoch(data)
    set_seed(seed)
    base = DigitsCNN()
    fit(base, data, 20, 1e-3, seed)
    out = {"fp32": export_acc(copy.deepcopy(base), data, folder / f"fp32-{seed}.onnx")}
    models, opts, scheds, distills = {}, {}, {}, {}
    for kind in ("plain", "distill"):
        m = copy.deepcopy(base)
        sk.prune(m, sk.MagnitudePruningConfig(
            sk.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=7 * spe, frequency=spe)))
        models[kind], scheds[kind] = m, sk.Scheduler(m)
        distills[kind] = Distillation(copy.deepcopy(base), **DISTILL) if kind == "distill" \
            else None
    times = {"prune": {"plain": [], "distill": []}, "cluster": {"plain": [], "distill": []},
             "qat": {"plain": [], "distill": []}}

    def stage(stage_name, epochs, scheduler=True):
        for kind in ("plain", "distill"):
            opts[kind] = torch.optim.Adam(
                [p for p in models[kind].parameters() if p.requires_grad], lr=1e-4)
        for epoch in range(epochs):
            for kind in ("plain", "distill"):
                times[stage_name][kind] += fit_with(
                    models[kind], data, opts[kind], [epoch], seed,
                    sk.Scheduler(models[kind]) if scheduler else None, distills[kind])

    # Prune: 10 epochs (one scheduler per model: the step count lives in the model).
    for kind in ("plain", "distill"):
        opts[kind] = torch.optim.Adam(models[kind].parameters(), lr=1e-4)
    for epoch in range(10):
        for kind in ("plain", "distill"):
            times["prune"][kind] += fit_with(models[kind], data, opts[kind], [epoch], seed,
                                             scheds[kind], distills[kind])
    for kind in ("plain", "distill"):
        out[f"prune-80 {kind}"] = export_acc(models[kind], data,
                                             folder / f"prune-{kind}-{seed}.onnx")
    for kind in ("plain", "distill"):
        sk.cluster(models[kind], sk.ClusteringConfig(16, init="kmeans++", seed=seed,
                                                     preserve_sparsity=True))
    stage("cluster", 5, scheduler=False)
    for kind in ("plain", "distill"):
        sk.quantize(models[kind], sk.QATConfig(per_channel=False, freeze_observers_step=3 * spe),
                    calibration=data.calibration, progress=False)
    stage("qat", 5)
    for kind in ("plain", "distill"):
        out[f"pcqat {kind}"] = export_acc(models[kind], data,
                                          folder / f"pcqat-{kind}-{seed}.onnx", compact=True)
    for k in list(out):
        if k != "fp32":
            out[f"{k} drop_points"] = 100 * (out["fp32"] - out[k])
    for name, t in times.items():
        out[f"{name} overhead"] = statistics.median(d / p for d, p in zip(t["distill"],
                                                                          t["plain"]))
        out[f"{name} seconds_per_epoch plain"] = statistics.median(t["plain"])
        out[f"{name} seconds_per_epoch distill"] = statistics.median(t["distill"])
    pc = [d / p for s in ("prune", "cluster", "qat") for d, p in
          zip(times[s]["distill"], times[s]["plain"])]
    out["pcqat overhead"] = statistics.median(pc)
    return out


def adaround_time(model, data) -> float:
    m = copy.deepcopy(model)
    t0 = time.perf_counter()
    sk.quantize(m, AdaRoundConfig(weight_bits=4), calibration=data.x_train[:256], progress=False)
    return time.perf_counter() - t0


def print_tables(rows, distill_stats, seeds, mobile_train) -> None:
    console = Console(width=160)
    table = Table(title="Post-training quantization and QAT, ONNX Runtime test accuracy "
                        "(360 images)")
    for col in ("model", "group", "variant", "accuracy", "drop (points)", "seconds"):
        table.add_column(col, justify="left" if col in ("model", "group", "variant") else
                         "right")
    for r in rows:
        secs = r.get("seconds", r.get("seconds_per_epoch"))
        table.add_row(r["model"], r["group"], r["variant"], f"{r['accuracy']:.4f}",
                      f"{r['drop_points']:.2f}", "-" if secs is None else f"{secs:.1f}")
    table.add_row("context", "low-bit weights", "AIMET ResNet-18 ImageNet, published: fp32 "
                  f"{AIMET['fp32']} -> AdaRound W4A8 {AIMET['adaround_w4a8']}", "-",
                  f"{AIMET['fp32'] - AIMET['adaround_w4a8']:.2f}", "-")
    console.print(table)
    console.print(f"MobileNetV2-style training: {mobile_train['epochs']} epochs, "
                  f"{mobile_train['seconds']:.0f} s")
    t2 = Table(title=f"Distillation on digits (seeds {seeds}; mean \\[min-max]), ORT accuracy")
    for col in ("variant", "accuracy", "drop (points)", "time x same fine-tune without"):
        t2.add_column(col, justify="left" if col == "variant" else "right")
    for v, over in (("prune-80", "prune"), ("pcqat", "pcqat")):
        for kind in ("plain", "distill"):
            a, d = distill_stats[f"{v} {kind}"], distill_stats[f"{v} {kind} drop_points"]
            o = distill_stats[f"{over} overhead"] if kind == "distill" else None
            t2.add_row(f"{v} {'with' if kind == 'distill' else 'without'} distillation",
                       f"{a['mean']:.4f} [{a['min']:.4f}-{a['max']:.4f}]",
                       f"{d['mean']:.2f} [{d['min']:.2f}-{d['max']:.2f}]",
                       "-" if o is None else f"{o['mean']:.2f}x [{o['min']:.2f}-{o['max']:.2f}]")
    console.print(t2)


def render(payload: dict) -> dict[str, str]:
    """Markdown tables of the results, for the docs pages (``--8<--`` includes)."""
    lines = ["| model | group | variant | ORT accuracy | drop (points) | seconds |",
             "|---|---|---|---:|---:|---:|"]
    for r in payload["rows"]:
        secs = r.get("seconds", r.get("seconds_per_epoch"))
        lines.append(f"| {r['model']} | {r['group']} | {r['variant']} | {r['accuracy']:.4f} | "
                     f"{r['drop_points']:.2f} | {'-' if secs is None else f'{secs:.1f}'} |")
    lines.append(f"| context | low-bit weights | {AIMET['model']}: fp32 {AIMET['fp32']} -> "
                 f"AdaRound W4A8 {AIMET['adaround_w4a8']} | - | "
                 f"{AIMET['fp32'] - AIMET['adaround_w4a8']:.2f} | - |")
    mt = payload["mobile_training"]
    quant = "\n".join(lines) + (
        f"\n\nMobileNetV2-style net: {mt['epochs']} epochs of training, {mt['seconds']:.0f} s "
        f"here. AdaRound W4A8 of the digits CNN: {payload['adaround_w4a8_digits_seconds']:.1f} s "
        f"(1000 steps per layer, 256 images, {payload['threads']} thread). Seconds: the "
        "quantization call (PTQ) or the median epoch (QAT). Machine: "
        f"{payload['note'] or 'not noted'}.\n")
    st = payload["distillation_summary"]
    d = ["| variant | ORT accuracy, mean [min-max] | drop (points) | time x same fine-tune "
         "without |", "|---|---:|---:|---:|"]
    for v, over in (("prune-80", "prune"), ("pcqat", "pcqat")):
        for kind in ("plain", "distill"):
            a, dr = st[f"{v} {kind}"], st[f"{v} {kind} drop_points"]
            o = st[f"{over} overhead"] if kind == "distill" else None
            d.append(f"| {v} {'with' if kind == 'distill' else 'without'} distillation | "
                     f"{a['mean']:.4f} [{a['min']:.4f}-{a['max']:.4f}] | "
                     f"{dr['mean']:.2f} [{dr['min']:.2f}-{dr['max']:.2f}] | "
                     + ("-" if o is None else f"{o['mean']:.2f}x [{o['min']:.2f}-{o['max']:.2f}]")
                     + " |")
    distill = "\n".join(d) + (
        f"\n\nSeeds {payload['seeds']}; distillation {payload['distillation']}; fp32 mean "
        f"{st['fp32']['mean']:.4f}.\n")
    return {"docs/techniques/accurate-quantization/results.md": quant,
            "docs/techniques/distillation/results.md": distill}


PARTS = ("digits", "mobile", "distill")


def run_part(part: str, args, data) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if part == "digits":
            set_seed(0)
            cnn = DigitsCNN()
            fit(cnn, data, 20, 1e-3, seed=0)
            rows = ptq_rows("digits-cnn", cnn, data, folder)
            rows += qat_rows(cnn, data, folder)
            return {"rows": rows, "adaround_w4a8_digits_seconds": adaround_time(cnn, data)}
        if part == "mobile":
            mobile_data = resized(data)
            set_seed(0)
            mobile = MobileNetV2Digits()
            t0 = time.perf_counter()
            fit(mobile, mobile_data, args.mobile_epochs, 3e-3, seed=0)
            train_s = time.perf_counter() - t0
            print(f"mobile trained in {train_s:.0f} s", flush=True)
            return {"rows": ptq_rows("mobilenetv2-32", mobile, mobile_data, folder),
                    "mobile_training": {"epochs": args.mobile_epochs, "seconds": train_s}}
        runs = []
        for seed in args.seeds:
            runs.append(distill_seed(seed, data, folder))
            print(f"distillation seed {seed} done: {runs[-1]}", flush=True)
        return {"distillation_runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--mobile-epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--part", choices=PARTS, help="run one part into --out (to run the "
                        "parts as parallel processes), then --merge them")
    parser.add_argument("--merge", nargs="+", help="part JSON files to merge into --out")
    parser.add_argument("--out", default="benchmarks/results/accurate_quant.json")
    parser.add_argument("--note", default="", help="machine conditions, kept in the JSON")
    args = parser.parse_args()
    # One thread: on the shared 2-core machine, 2 threads measured ~40x slower per conv step
    # under load (OpenMP threads waiting on each other), 1 thread does not suffer from it.
    torch.set_num_threads(args.threads)
    data = load_digits_data()
    if args.merge:
        import json

        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        merged = {"rows": [], "export_validation_failures": []}
        for p in parts:
            merged["rows"] += p.pop("rows", [])
            merged["export_validation_failures"] += p.pop("export_validation_failures", [])
            merged.update({k: v for k, v in p.items() if k not in ("note", "seeds")})
    else:
        merged = {"rows": []}
        for part in ([args.part] if args.part else PARTS):
            got = run_part(part, args, data)
            merged["rows"] += got.pop("rows", [])
            merged.update(got)
        merged["export_validation_failures"] = merged.get("export_validation_failures", []) + \
            VALIDATION_FAILURES
    payload = {
        "task": "digits", "technique": "accurate-quantization", "threads": args.threads,
        "torch": torch.__version__, "numpy": np.__version__, "note": args.note,
        "aimet_context": AIMET, "distillation": DISTILL, "seeds": args.seeds, **merged,
    }
    if "distillation_runs" in payload:
        runs = payload["distillation_runs"]
        keys = [k for k, v in runs[0].items() if isinstance(v, float)]
        payload["distillation_summary"] = {k: summary([r[k] for r in runs]) for k in keys}
    write_results(args.out, payload)
    if args.part:
        return
    for path, text in render(payload).items():
        Path(path).write_text(text)
    print_tables(payload["rows"], payload["distillation_summary"], args.seeds,
                 payload["mobile_training"])
    print(f"AdaRound W4A8 of the digits CNN: {payload['adaround_w4a8_digits_seconds']:.1f} s")


if __name__ == "__main__":
    main()
