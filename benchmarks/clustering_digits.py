"""The standard digits task for weight clustering (../shared/BENCHMARKS.md), over seeds 0, 1, 2.

Per seed: train the baseline (Adam 1e-3, batch 32, 20 epochs) and export it. Then, from that
baseline:

- clustered: 16 clusters, k-means++, all four kernels, 5 epochs Adam 1e-4; exported plain and
  compact (uint8 indices + codebook);
- plain fine-tune: the same 5 epochs without clustering, a same-run control for the overhead;
- pruned + clustered: 80% per layer (cubic 0 -> 0.8 over the first 7 of 10 epochs, one mask
  update per epoch, Adam 1e-4), then preserve_sparsity clustering, 16 clusters, 5 epochs.

Accuracy is measured on the ONNX Runtime artifacts. Zip ratio = zipped fp32 baseline / zipped
artifact; raw ratio = raw fp32 baseline / raw compact artifact. Training overhead = median
seconds per fine-tune epoch / median seconds per baseline epoch (as BENCHMARKS.md defines it),
and, less exposed to the machine's load drifting over the run, / median seconds per epoch of
the plain fine-tune run right after it.

    python benchmarks/clustering_digits.py            # prints a table, writes JSON
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
from pathlib import Path

import numpy as np
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
from slimkit.techniques.clustering import ClusteringConfig, cluster


def kernels(path: Path) -> list[np.ndarray]:
    return [numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer
            if len(t.dims) >= 2]


def sparsity(path: Path) -> float:
    ws = kernels(path)
    return sum(int((w == 0).sum()) for w in ws) / sum(w.size for w in ws)


def run_seed(seed: int, data, folder: Path, clusters: int, latency_runs: int) -> dict:
    x = data.x_test[:256]
    eval_fn = accuracy_eval(data)

    def export(model, label, compact=False):
        path = sk.export_onnx(model, folder / f"{label}-{seed}.onnx", example_inputs=x,
                              compact=compact)
        rep = sk.report(path, x, eval_fn=eval_fn, threads=2, latency_runs=latency_runs,
                        warmup=20, memory=False)
        return path, rep

    set_seed(seed)
    baseline = DigitsCNN()
    base_times = train(baseline, data, epochs=20, lr=1e-3, seed=seed)
    _, base = export(baseline, "baseline")

    clustered = copy.deepcopy(baseline)
    cluster(clustered, ClusteringConfig(clusters, init="kmeans++", seed=seed))
    ft_times = train(clustered, data, epochs=5, lr=1e-4, seed=seed)
    plain_ft = copy.deepcopy(baseline)
    plain_times = train(plain_ft, data, epochs=5, lr=1e-4, seed=seed)
    c_path, c_rep = export(clustered, "clustered")
    k_path, k_rep = export(clustered, "clustered-compact", compact=True)

    spe = steps_per_epoch(data)
    pruned = copy.deepcopy(baseline)
    sk.prune(pruned, sk.MagnitudePruningConfig(
        sk.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=7 * spe, frequency=spe)))
    train(pruned, data, epochs=10, lr=1e-4, seed=seed, scheduler=sk.Scheduler(pruned))
    p_path, p_rep = export(pruned, "pruned")
    cluster(pruned, ClusteringConfig(clusters, init="kmeans++", preserve_sparsity=True,
                                     seed=seed))
    pc_times = train(pruned, data, epochs=5, lr=1e-4, seed=seed)
    pc_path, pc_rep = export(pruned, "pruned-clustered")
    pck_path, pck_rep = export(pruned, "pruned-clustered-compact", compact=True)

    acc = base.metrics["accuracy"]
    base_epoch = statistics.median(base_times)
    lat = (lambda r: r.latency["p50_ms"]) if latency_runs else (lambda r: float("nan"))
    return {
        "seed": seed,
        "baseline_accuracy": acc,
        "clustered_accuracy": c_rep.metrics["accuracy"],
        "clustered_compact_accuracy": k_rep.metrics["accuracy"],
        "clustered_drop_points": 100 * (acc - c_rep.metrics["accuracy"]),
        "clustered_zip_ratio": base.zipped_bytes / c_rep.zipped_bytes,
        "clustered_compact_zip_ratio": base.zipped_bytes / k_rep.zipped_bytes,
        "clustered_compact_raw_ratio": base.raw_bytes / k_rep.raw_bytes,
        "clustered_entropy_bound_ratio": base.zipped_bytes / c_rep.entropy_bound_bytes,
        "clustered_kernel_unique": [len(np.unique(w)) for w in kernels(c_path)],
        "overhead_vs_baseline_epochs": statistics.median(ft_times) / base_epoch,
        "overhead_vs_plain_finetune": statistics.median(ft_times) / statistics.median(plain_times),
        "compact_latency_ratio": lat(k_rep) / lat(base),
        "pruned_accuracy": p_rep.metrics["accuracy"],
        "pruned_sparsity": sparsity(p_path),
        "pruned_zip_ratio": base.zipped_bytes / p_rep.zipped_bytes,
        "pruned_clustered_accuracy": pc_rep.metrics["accuracy"],
        "pruned_clustered_compact_accuracy": pck_rep.metrics["accuracy"],
        "pruned_clustered_drop_points": 100 * (acc - pc_rep.metrics["accuracy"]),
        "pruned_clustered_sparsity": sparsity(pc_path),
        "pruned_clustered_kernel_unique": [len(np.unique(w)) for w in kernels(pc_path)],
        "pruned_clustered_zip_ratio": base.zipped_bytes / pc_rep.zipped_bytes,
        "pruned_clustered_compact_zip_ratio": base.zipped_bytes / pck_rep.zipped_bytes,
        "pruned_clustered_compact_raw_ratio": base.raw_bytes / pck_rep.raw_bytes,
        "pruned_clustered_entropy_bound_ratio": base.zipped_bytes / pc_rep.entropy_bound_bytes,
        "pruned_clustered_overhead_vs_baseline_epochs": statistics.median(pc_times) / base_epoch,
        "seconds_per_epoch": {"baseline": base_epoch, "clustered": statistics.median(ft_times),
                              "plain_finetune": statistics.median(plain_times),
                              "pruned_clustered": statistics.median(pc_times)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--clusters", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--latency-runs", type=int, default=200)
    parser.add_argument("--out", default="benchmarks/results/clustering_digits.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_digits_data()
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for s in args.seeds:
            runs.append(run_seed(s, data, Path(tmp), args.clusters, args.latency_runs))
            Console(stderr=True).print(f"seed {s} done")

    keys = [k for k, v in runs[0].items() if isinstance(v, float)]
    stats = {k: summary([r[k] for r in runs]) for k in keys}
    table = Table(title=f"digits, weight clustering {args.clusters} (seeds {args.seeds}, "
                        f"{args.threads} threads)")
    table.add_column("figure")
    table.add_column("mean [min-max]", justify="right")
    for k, s in stats.items():
        table.add_row(k, f"{s['mean']:.4f} [{s['min']:.4f}-{s['max']:.4f}]")
    table.add_row("clustered_kernel_unique (seed 0)", str(runs[0]["clustered_kernel_unique"]))
    table.add_row("pruned_clustered_kernel_unique (seed 0)",
                  str(runs[0]["pruned_clustered_kernel_unique"]))
    Console().print(table)
    write_results(args.out, {"task": "digits", "technique": "weight-clustering",
                                   "clusters": args.clusters, "threads": args.threads,
                                   "torch": torch.__version__, "runs": runs,
                                   "summary": stats})


if __name__ == "__main__":
    main()
