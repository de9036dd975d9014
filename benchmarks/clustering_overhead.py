"""Training-step time of a clustered model vs the same model plain, side by side in one run.

Models: the digits CNN (batch 32 of 1x8x8) and a 4 x 1024 MLP (batch 64 of 1024 features),
16 clusters per layer, per tensor and per channel. Each step is forward + backward + optimizer
step (+ ``scheduler.step()`` for the clustered model; refresh_every=0, so no step re-assigns).
Timings alternate between the variants in rounds so they share the machine's noise; the
figure is the median step time of the clustered model / the median of the plain one.

    python benchmarks/clustering_overhead.py
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import slimkit as sk

# Shared with the pruning overhead benchmark (run as a script, benchmarks/ is on sys.path).
from pruning_overhead import interleaved_medians, overhead_cases, stepper  # noqa: E402
from slimkit.core.io import atomic_path
from slimkit.examples import DigitsCNN
from slimkit.techniques.clustering import ClusteringConfig, cluster


def measure(name, make, x, y, per_channel, optimizer, rounds, steps) -> dict:
    torch.manual_seed(0)
    plain = make()
    clustered = copy.deepcopy(plain)
    # Per channel, the digits CNN's conv1 (9 weights per channel) cannot hold 16 values.
    ignore = ["conv1"] if per_channel and isinstance(plain, DigitsCNN) else None
    cluster(clustered, ClusteringConfig(16, per_channel=per_channel), ignore=ignore)
    variants = {"plain": stepper(plain, x, y, optimizer=optimizer),
                "clustered": stepper(clustered, x, y, sk.Scheduler(clustered),
                                     optimizer=optimizer)}
    med = interleaved_medians(variants, rounds, steps)
    return {"model": name, "per_channel": per_channel, "optimizer": optimizer,
            "plain_ms": 1e3 * med["plain"], "clustered_ms": 1e3 * med["clustered"],
            "ratio": med["clustered"] / med["plain"], "steps_each": rounds * steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/clustering_overhead.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(name, make, x, y, pc, opt, args.rounds, args.steps)
            for name, make, x, y in overhead_cases() for pc in (False, True)
            for opt in ("adam", "sgd")]
    table = Table(title=f"training step time, clustered (16) vs plain, medians, "
                        f"{args.threads} threads")
    for c in ("model", "codebook", "optimizer", "plain ms", "clustered ms", "ratio", "steps"):
        table.add_column(c, justify="left" if c in ("model", "codebook", "optimizer") else "right")
    for r in rows:
        table.add_row(r["model"], "per channel" if r["per_channel"] else "per tensor",
                      r["optimizer"], f"{r['plain_ms']:.3f}", f"{r['clustered_ms']:.3f}",
                      f"{r['ratio']:.3f}x", str(r["steps_each"]))
    Console().print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps({"torch": torch.__version__, "threads": args.threads,
                                   "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
