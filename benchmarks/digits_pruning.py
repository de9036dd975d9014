"""The standard digits task for magnitude pruning (../shared/BENCHMARKS.md), over seeds 0, 1, 2.

Per seed: train the baseline (Adam 1e-3, batch 32, 20 epochs), export it; then from that
baseline prune to 80% per layer with a cubic schedule from 0 to 0.8 over the first 7 of 10
fine-tune epochs (Adam 1e-4, one mask update per epoch), export. Accuracy is measured on the
ONNX Runtime artifacts. Training overhead = median seconds per fine-tune epoch / median
seconds per baseline epoch, measured in the same run.

    python benchmarks/digits_pruning.py            # prints a table, writes JSON
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
from pathlib import Path

import onnx
import torch
from onnx import numpy_helper
from rich.console import Console
from rich.table import Table

import slimkit as sk
from common import summary, write_results  # noqa: E402  (benchmarks/ is on sys.path)
from slimkit.examples import (
    DigitsCNN,
    accuracy_eval,
    load_digits_data,
    set_seed,
    steps_per_epoch,
    train,
)


def run_seed(seed: int, data, folder: Path, sparsity: float) -> dict:
    set_seed(seed)
    model = DigitsCNN()
    base_times = train(model, data, epochs=20, lr=1e-3, seed=seed)
    baseline = copy.deepcopy(model)
    spe = steps_per_epoch(data)
    sk.prune(model, sk.MagnitudePruningConfig(
        sk.PolynomialDecay(0.0, sparsity, begin_step=0, end_step=7 * spe, frequency=spe)))
    ft_times = train(model, data, epochs=10, lr=1e-4, seed=seed, scheduler=sk.Scheduler(model))

    x = data.x_test[:256]
    eval_fn = accuracy_eval(data)
    reps = {}
    for label, m in (("baseline", baseline), ("pruned", model)):
        path = sk.export_onnx(m, folder / f"{label}-{seed}.onnx", example_inputs=x)
        reps[label] = sk.report(path, x, eval_fn=eval_fn, threads=2, latency_runs=200,
                                warmup=20, memory=False)
    kernels = [numpy_helper.to_array(t) for t in
               onnx.load(folder / f"pruned-{seed}.onnx").graph.initializer if len(t.dims) >= 2]
    return {
        "seed": seed,
        "baseline_accuracy": reps["baseline"].metrics["accuracy"],
        "pruned_accuracy": reps["pruned"].metrics["accuracy"],
        "baseline_zipped_bytes": reps["baseline"].zipped_bytes,
        "pruned_zipped_bytes": reps["pruned"].zipped_bytes,
        "zip_ratio": reps["baseline"].zipped_bytes / reps["pruned"].zipped_bytes,
        "raw_ratio": reps["baseline"].raw_bytes / reps["pruned"].raw_bytes,
        "entropy_bound_ratio": reps["baseline"].zipped_bytes / reps["pruned"].entropy_bound_bytes,
        "kernel_nonzeros": [int((w != 0).sum()) for w in kernels],
        "kernel_unique": [int(len(set(w.ravel().tolist()))) for w in kernels],
        "overhead": statistics.median(ft_times) / statistics.median(base_times),
        "latency_ratio": reps["baseline"].latency["p50_ms"] / reps["pruned"].latency["p50_ms"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--out", default="benchmarks/results/digits_pruning.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = load_digits_data()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run_seed(s, data, Path(tmp), args.sparsity) for s in args.seeds]

    keys = ["baseline_accuracy", "pruned_accuracy", "zip_ratio", "raw_ratio",
            "entropy_bound_ratio", "overhead", "latency_ratio"]
    stats = {k: summary([r[k] for r in runs]) for k in keys}
    stats["accuracy_drop_points"] = summary(
        [100 * (r["baseline_accuracy"] - r["pruned_accuracy"]) for r in runs])
    table = Table(title=f"digits, magnitude pruning {args.sparsity:.0%} (seeds {args.seeds})")
    table.add_column("figure")
    table.add_column("mean [min-max]", justify="right")
    for k, s in stats.items():
        table.add_row(k, f"{s['mean']:.4f} [{s['min']:.4f}-{s['max']:.4f}]")
    Console().print(table)
    write_results(args.out, {"task": "digits", "technique": "magnitude-pruning",
                                   "sparsity": args.sparsity, "torch": torch.__version__,
                                   "runs": runs, "summary": stats})


if __name__ == "__main__":
    main()
