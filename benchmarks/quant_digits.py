"""The digits task for quantization (../shared/BENCHMARKS.md), over seeds 0, 1, 2.

Per seed: train the baseline (Adam 1e-3, batch 32, 20 epochs) and export it; from that
baseline build
- PTQ static int8 (U8S8, per-channel weights) calibrated on the first 100 training images;
- QAT int8: 5 epochs of Adam 1e-4 with fake-quant, observers frozen after epoch 3 (each
  epoch is followed by an fp32 fine-tune epoch of a copy, for the overhead figure);
- weight-only int4 (groups of 32 input weights; convs per channel).
Every figure is measured on the ONNX Runtime artifact: test accuracy, file size raw and
zipped, ORT latency (2 threads, batch 256, median of 200 runs after warm-up, the four
files taking turns in blocks of 10 runs). QAT overhead =
median seconds per QAT epoch / median seconds per baseline epoch, in the same run; also
reported against the interleaved fp32 fine-tune epochs, the figure robust to machine load.

    python benchmarks/quant_digits.py            # prints a table, writes JSON
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

import slimkit as sk
from common import summary, write_results  # noqa: E402  (benchmarks/ is on sys.path)
from quant_vs_ort import latencies  # a sibling script: benchmarks/ is on sys.path
from slimkit.examples import (
    DigitsCNN,
    load_digits_data,
    set_seed,
    steps_per_epoch,
    train,
    train_with,
)
from slimkit.export import ort_session
from slimkit.metrics.sizes import file_size, zipped_size
from slimkit.techniques.quantization import QATConfig, QuantizationConfig, quantize

VARIANTS = ["fp32", "ptq_int8", "qat_int8", "weight_only_int4"]


def ort_accuracy(path: Path, data) -> float:
    sess = ort_session(path)
    logits = sess.run(None, {"input": data.x_test.numpy()})[0]
    return float((logits.argmax(1) == data.y_test.numpy()).mean())


def run_seed(seed: int, data, folder: Path) -> dict:
    set_seed(seed)
    base = DigitsCNN()
    base_times = train(base, data, epochs=20, lr=1e-3, seed=seed)
    models = {"fp32": base}

    ptq = quantize(copy.deepcopy(base), QuantizationConfig(), calibration=data.calibration,
                   progress=False)
    models["ptq_int8"] = ptq

    qat = copy.deepcopy(base)
    spe = steps_per_epoch(data)
    quantize(qat, QATConfig(freeze_observers_step=3 * spe), calibration=data.calibration,
             progress=False)
    # QAT epochs interleaved with fp32 fine-tune epochs (same optimizer settings), so both
    # see the same machine load: on a shared machine, timing them minutes apart measures
    # the neighbours, not slimkit.
    ft = copy.deepcopy(base)
    qat_opt = torch.optim.Adam(qat.parameters(), lr=1e-4)
    ft_opt = torch.optim.Adam(ft.parameters(), lr=1e-4)
    scheduler = sk.Scheduler(qat)
    qat_times, ft_times = [], []
    for epoch in range(5):
        qat_times += train_with(qat, data, qat_opt, epochs=epoch + 1, start_epoch=epoch,
                                seed=seed, scheduler=scheduler)
        ft_times += train_with(ft, data, ft_opt, epochs=epoch + 1, start_epoch=epoch, seed=seed)
    models["qat_int8"] = qat

    models["weight_only_int4"] = quantize(
        copy.deepcopy(base), QuantizationConfig(mode="weight_only", weight_bits=4, group_size=32))

    x256 = data.x_test[:256].numpy()
    out, paths = {"seed": seed}, {}
    for name, model in models.items():
        paths[name] = sk.export_onnx(model, folder / f"{name}-{seed}.onnx",
                                     example_inputs=data.x_test[:8])
    # The four files take turns in blocks of runs (see quant_vs_ort.latencies): load drifts.
    lat = latencies(paths, {"input": x256}, runs=200, warmup=20)
    for name, path in paths.items():
        out[name] = {
            "accuracy": ort_accuracy(path, data),
            "raw_bytes": file_size(path),
            "zipped_bytes": zipped_size(path),
            "latency_b256_ms": lat[name],
        }
    for name in VARIANTS[1:]:
        out[name]["raw_ratio"] = out["fp32"]["raw_bytes"] / out[name]["raw_bytes"]
        out[name]["zip_ratio"] = out["fp32"]["zipped_bytes"] / out[name]["zipped_bytes"]
        out[name]["speedup_b256"] = out["fp32"]["latency_b256_ms"] / out[name]["latency_b256_ms"]
        out[name]["accuracy_drop_points"] = 100 * (out["fp32"]["accuracy"] - out[name]["accuracy"])
    out["qat_int8"]["overhead_vs_baseline_epoch"] = (
        statistics.median(qat_times) / statistics.median(base_times))
    out["qat_int8"]["overhead_vs_finetune_epoch"] = (
        statistics.median(qat_times) / statistics.median(ft_times))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="benchmarks/results/quant_digits.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = load_digits_data()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run_seed(s, data, Path(tmp)) for s in args.seeds]

    stats = {}
    for name in VARIANTS:
        keys = [k for k in runs[0][name] if isinstance(runs[0][name][k], float | int)]
        stats[name] = {k: summary([r[name][k] for r in runs]) for k in keys}
    table = Table(title=f"digits, quantization on the ORT artifacts (seeds {args.seeds})")
    for col in ["variant", "figure", "mean [min-max]"]:
        table.add_column(col, justify="right" if col.startswith("mean") else "left")
    for name, figures in stats.items():
        for k, s in figures.items():
            fmt = ".0f" if k.endswith("bytes") else ".4f"
            table.add_row(name, k, f"{s['mean']:{fmt}} [{s['min']:{fmt}}-{s['max']:{fmt}}]")
    Console().print(table)
    write_results(args.out, {"task": "digits", "technique": "quantization",
                                   "torch": torch.__version__, "numpy": np.__version__,
                                   "runs": runs, "summary": stats})


if __name__ == "__main__":
    main()
