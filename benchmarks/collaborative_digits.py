"""Collaborative optimization on the digits task (../shared/BENCHMARKS.md), seeds 0, 1, 2.

Per seed, from the baseline (Adam 1e-3, batch 32, 20 epochs), every fine-tune with Adam 1e-4:
- prune-80: 80% per layer, cubic 0 -> 0.8 over the first 7 of 10 epochs, masks once per epoch;
- cluster-16: 16 clusters (k-means++) on the four kernels, 5 epochs; compact export
  (uint8 indices + codebook);
- qat-int8: QAT int8 (U8S8, per-channel weights), 5 epochs, observers frozen after epoch 3;
- pcqat: the prune-80 model -> sparsity-preserving clustering (16) for 5 epochs -> cluster-
  and sparsity-preserving QAT for 5 epochs with one weight scale per tensor (the 16 clusters
  stay 16 int8 values per layer) -> int8 artifact, compact (4-bit indices + int8 codebook);
- pcqat-per-channel: the same with per-channel weight scales (QATConfig's default);
- pcqat-global: as pcqat, but the 80% ranked globally over the four kernels;
- stretch-90-8: 90% sparsity ranked globally over the four kernels (the 288-weight conv1
  keeps more, the 131k-weight fc1 less), 8 clusters, per-tensor int8, same epochs as pcqat.
Every figure is read from the ONNX Runtime artifact: test accuracy, sparsity and unique values
per output channel of the kernels, raw and zipped size; the packed file (sk.export_packed of
the torch model) and the entropy bound of the artifact (sk.report's definition). Overhead of a
stage = median seconds per epoch of that stage / median seconds per baseline epoch (same run);
also, robust to load drift, the median ratio of each stage epoch to a plain fp32 fine-tune
epoch run right after it.

    python benchmarks/collaborative_digits.py          # prints a table, writes JSON
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
from onnx import TensorProto, numpy_helper
from rich.console import Console
from rich.table import Table

import slimkit as sk
from common import summary, write_results  # noqa: E402  (benchmarks/ is on sys.path)
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
from slimkit.metrics.weights import onnx_weight_inventory
from slimkit.techniques.clustering import expand_compact

VARIANTS = ["fp32", "prune-80", "cluster-16", "qat-int8", "pcqat", "pcqat-per-channel",
            "pcqat-global", "stretch-90-8"]
STRETCH = {"sparsity": 0.9, "clusters": 8, "scope": "global"}
DEFINITIONS = {
    "accuracy": "test accuracy of the ONNX artifact in ONNX Runtime",
    "drop_points": "100 * (fp32 accuracy - accuracy)",
    "sparsity": "share of exact zeros over the four kernels of the artifact",
    "unique_per_channel": "most distinct values in one output channel of any kernel",
    "raw_ratio": "fp32 ONNX bytes / artifact bytes",
    "zip_ratio": "zipped fp32 ONNX / zipped artifact (DEFLATE level 9)",
    "packed_ratio": "zipped fp32 ONNX / packed file (sk.export_packed, not zipped)",
    "packed_vs_bound": "packed bytes / entropy bound of the artifact (sk.report)",
    "overhead": "median s per epoch of the stage / median s per baseline epoch (the "
                "BENCHMARKS.md definition; moved by machine load between the two)",
    "overhead_vs_finetune": "median over the stage's epochs of (s per stage epoch / s per "
                            "the plain fp32 fine-tune epoch run right after it)",
}


def kernels(path: Path) -> dict[str, np.ndarray]:
    """The weight tensors the artifact runs: int8 / fp32 initializers and compact rebuilds."""
    graph = onnx.load(path).graph
    rebuilt = expand_compact(graph)
    out = dict(rebuilt)
    for t in graph.initializer:
        if len(t.dims) < 2 or t.data_type not in (TensorProto.FLOAT, TensorProto.INT8):
            continue
        if any(t.name.startswith(f"{name}__") for name in rebuilt):
            continue  # indices / codebook of a compact weight
        out[t.name] = numpy_helper.to_array(t)
    return out


def ort_accuracy(path: Path, data) -> float:
    logits = ort_session(path).run(None, {"input": data.x_test.numpy()})[0]
    return float((logits.argmax(1) == data.y_test.numpy()).mean())


def measure(model, path: Path, data, compact: bool) -> dict:
    sk.export_onnx(model, path, example_inputs=data.x_test[:8], compact=compact)
    packed = sk.export_packed(model, path.with_suffix(".skpack"))
    ws = kernels(path)
    zeros = sum(int((w == 0).sum()) for w in ws.values())
    return {
        "accuracy": ort_accuracy(path, data),
        "sparsity": zeros / sum(w.size for w in ws.values()),
        "unique_per_channel": max(max(len(np.unique(r)) for r in w.reshape(w.shape[0], -1))
                                  for w in ws.values()),
        "raw_bytes": file_size(path),
        "zipped_bytes": zipped_size(path),
        "packed_bytes": file_size(packed),
        "entropy_bound_bytes": onnx_weight_inventory(path).entropy_bound_bytes,
    }


def run_seed(seed: int, data, folder: Path) -> dict:
    spe = steps_per_epoch(data)
    set_seed(seed)
    base = DigitsCNN()
    baseline_times = train(base, data, epochs=20, lr=1e-3, seed=seed)
    results = {"fp32": measure(base, folder / f"fp32-{seed}.onnx", data, compact=False)}
    times = {}  # stage -> (seconds per stage epoch, seconds per paired plain fine-tune epoch)

    def fit(model, epochs, scheduler=None):
        # Each stage epoch is followed by one plain fp32 fine-tune epoch (Adam 1e-4, a copy of
        # the baseline), so the pair sees the same machine load: on a shared machine, epochs
        # timed minutes apart measure the neighbours, not slimkit.
        plain = copy.deepcopy(base)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-4)
        mine, ref = [], []
        for epoch in range(epochs):
            mine += train_with(model, data, opt, epochs=epoch + 1, start_epoch=epoch, seed=seed,
                               scheduler=scheduler)
            ref += train_with(plain, data, plain_opt, epochs=epoch + 1, start_epoch=epoch,
                              seed=seed)
        return mine, ref

    def prune(sparsity, scope="layer"):
        model = copy.deepcopy(base)
        sk.prune(model, sk.MagnitudePruningConfig(
            sk.PolynomialDecay(0.0, sparsity, begin_step=0, end_step=7 * spe, frequency=spe),
            scope=scope))
        return model, fit(model, 10, sk.Scheduler(model))

    def cluster(model, clusters, preserve):
        sk.cluster(model, sk.ClusteringConfig(clusters, init="kmeans++", seed=seed,
                                              preserve_sparsity=preserve))
        return fit(model, 5)

    def qat(model, per_channel):
        sk.quantize(model, sk.QATConfig(per_channel=per_channel, freeze_observers_step=3 * spe),
                    calibration=data.calibration, progress=False)
        return fit(model, 5, sk.Scheduler(model))

    pruned, times["prune"] = prune(0.8)
    results["prune-80"] = measure(pruned, folder / f"prune-{seed}.onnx", data, compact=False)

    clustered = copy.deepcopy(base)
    times["cluster"] = cluster(clustered, 16, preserve=False)
    results["cluster-16"] = measure(clustered, folder / f"cluster-{seed}.onnx", data, True)

    quantized = copy.deepcopy(base)
    times["qat"] = qat(quantized, per_channel=True)
    results["qat-int8"] = measure(quantized, folder / f"qat-{seed}.onnx", data, compact=False)

    times["pcqat_cluster"] = cluster(pruned, 16, preserve=True)
    pc_channel = copy.deepcopy(pruned)
    times["pcqat_qat"] = qat(pruned, per_channel=False)
    results["pcqat"] = measure(pruned, folder / f"pcqat-{seed}.onnx", data, compact=True)
    plain = measure(pruned, folder / f"pcqat-plain-{seed}.onnx", data, compact=False)
    results["pcqat"]["plain_int8_zipped_bytes"] = plain["zipped_bytes"]
    results["pcqat"]["plain_int8_raw_bytes"] = plain["raw_bytes"]
    times["pcqat_per_channel_qat"] = qat(pc_channel, per_channel=True)
    results["pcqat-per-channel"] = measure(pc_channel, folder / f"pcqat-pc-{seed}.onnx", data,
                                           compact=True)

    glob, times["global_prune"] = prune(0.8, "global")
    times["global_cluster"] = cluster(glob, 16, preserve=True)
    times["global_qat"] = qat(glob, per_channel=False)
    results["pcqat-global"] = measure(glob, folder / f"pcqat-global-{seed}.onnx", data, True)

    stretch, times["stretch_prune"] = prune(STRETCH["sparsity"], STRETCH["scope"])
    times["stretch_cluster"] = cluster(stretch, STRETCH["clusters"], preserve=True)
    times["stretch_qat"] = qat(stretch, per_channel=False)
    results["stretch-90-8"] = measure(stretch, folder / f"stretch-{seed}.onnx", data, True)

    fp32 = results["fp32"]
    for r in results.values():
        r["drop_points"] = 100 * (fp32["accuracy"] - r["accuracy"])
        r["raw_ratio"] = fp32["raw_bytes"] / r["raw_bytes"]
        r["zip_ratio"] = fp32["zipped_bytes"] / r["zipped_bytes"]
        r["packed_ratio"] = fp32["zipped_bytes"] / r["packed_bytes"]
        r["packed_vs_bound"] = r["packed_bytes"] / r["entropy_bound_bytes"]
    base_epoch = statistics.median(baseline_times)
    stages = {"prune-80": ["prune"], "cluster-16": ["cluster"], "qat-int8": ["qat"],
              "pcqat": ["prune", "pcqat_cluster", "pcqat_qat"],
              "pcqat-per-channel": ["prune", "pcqat_cluster", "pcqat_per_channel_qat"],
              "pcqat-global": ["global_prune", "global_cluster", "global_qat"],
              "stretch-90-8": ["stretch_prune", "stretch_cluster", "stretch_qat"]}
    for name, keys in stages.items():
        for i, key in enumerate(keys):
            suffix = "" if len(keys) == 1 else f"_{['prune', 'cluster', 'qat'][i]}"
            mine, ref = times[key]
            results[name][f"overhead{suffix}"] = statistics.median(mine) / base_epoch
            results[name][f"overhead{suffix}_vs_finetune"] = statistics.median(
                m / r for m, r in zip(mine, ref))
    results["seconds_per_epoch"] = {
        "baseline": base_epoch,
        **{k: statistics.median(mine) for k, (mine, _) in times.items()},
        **{f"{k}_paired_finetune": statistics.median(ref) for k, (_, ref) in times.items()},
    }
    return {"seed": seed, **results}


COLUMNS = [("accuracy", ".4f"), ("drop_points", ".2f"), ("sparsity", ".3f"),
           ("unique_per_channel", ".0f"), ("raw_ratio", ".1f"), ("zip_ratio", ".1f"),
           ("packed_ratio", ".1f"), ("packed_vs_bound", ".3f")]


def summarize(runs: list[dict]) -> dict:
    stats = {}
    for name in VARIANTS:
        keys = [k for k, v in runs[0][name].items() if isinstance(v, (int, float))]
        stats[name] = {k: summary([r[name][k] for r in runs]) for k in keys}
    return stats


def print_table(stats: dict, seeds: list[int]) -> None:
    def cell(s, fmt):
        return f"{s['mean']:{fmt}} [{s['min']:{fmt}}-{s['max']:{fmt}}]"

    table = Table(title=f"digits, collaborative optimization, ONNX Runtime artifacts "
                        f"(seeds {seeds}; mean [min-max])")
    table.add_column("variant")
    for key, _ in COLUMNS:
        table.add_column(key, justify="right")
    table.add_column("overhead per stage: x baseline epoch / x paired fine-tune epoch",
                     justify="right")
    for name in VARIANTS:
        s = stats[name]
        overheads = [f"{k.removeprefix('overhead').lstrip('_') or 'stage'} {s[k]['mean']:.2f}x"
                     f" / {s[k + '_vs_finetune']['mean']:.2f}x"
                     for k in s if k.startswith("overhead") and not k.endswith("_vs_finetune")]
        table.add_row(name, *[cell(s[k], f) for k, f in COLUMNS], ", ".join(overheads) or "-")
    Console(width=200).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="benchmarks/results/collaborative_digits.json")
    parser.add_argument("--note", default="", help="machine conditions, kept in the JSON")
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = load_digits_data()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            runs.append(run_seed(seed, data, Path(tmp)))
            print(f"seed {seed} done", flush=True)
    stats = summarize(runs)
    write_results(args.out, {
        "task": "digits", "technique": "collaborative", "seeds": args.seeds, "threads": 2,
        "torch": torch.__version__, "numpy": np.__version__, "note": args.note,
        "variants": VARIANTS, "stretch": STRETCH, "definitions": DEFINITIONS,
        "runs": runs, "summary": stats,
    })
    print_table(stats, args.seeds)


if __name__ == "__main__":
    main()
