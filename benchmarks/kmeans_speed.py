"""Time slimkit's 1-D k-means against scikit-learn on random-normal weights.

Runs kmeans_1d (k-means++ init, defaults otherwise) on N(0, 1) float32 weights of each size and
k, plus scikit-learn KMeans(init="k-means++", n_init=1) where the size is small enough (it
takes minutes on 10M values), and one per-channel case. Prints a table and writes JSON.

Example:
    python benchmarks/kmeans_speed.py
    python benchmarks/kmeans_speed.py --sizes 1000000 --k 16 --out /tmp/kmeans.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import sklearn
import torch
from rich.console import Console
from rich.table import Table
from sklearn.cluster import KMeans

from slimkit.techniques.clustering.kmeans import kmeans_1d, kmeans_1d_per_channel, sse

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "kmeans_speed.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000],
                   help="numbers of weights (default: 1000000 10000000)")
    p.add_argument("--k", type=int, nargs="+", default=[16, 256],
                   help="numbers of clusters (default: 16 256)")
    p.add_argument("--repeats", type=int, default=3, help="runs per case; the median is kept")
    p.add_argument("--sklearn-max-size", type=int, default=1_000_000,
                   help="run scikit-learn only up to this many weights (default: 1000000)")
    p.add_argument("--per-channel", type=int, nargs=3, default=[1024, 1024, 16],
                   metavar=("ROWS", "COLS", "K"),
                   help="per-channel case: a ROWS x COLS weight with K clusters per row "
                        "(default: 1024 1024 16; ROWS=0 skips it)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and of the inits")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"JSON output path (default: {DEFAULT_OUT})")
    args = p.parse_args(argv)
    for name in ("sizes", "k"):
        if min(getattr(args, name)) < (1 if name == "sizes" else 2):
            p.error(f"--{name} must be positive (k >= 2), got {getattr(args, name)}")
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    return args


def timed(repeats: int, fn, *args, **kwargs):
    """Run fn(*args, **kwargs) `repeats` times; return (wall times in s, last result)."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return times, result


def run_sklearn(values: np.ndarray, k: int, seed: int):
    model = KMeans(n_clusters=k, init="k-means++", n_init=1, random_state=seed)
    model.fit(values.reshape(-1, 1))
    return model.cluster_centers_.reshape(-1), model.labels_


def write_json_atomically(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the target and rename, so a crash never leaves a truncated file behind.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    if not console.is_terminal:  # piped to a file: do not squeeze the table into 80 columns
        console = Console(width=120)
    rows = []
    for n in args.sizes:
        values_t = torch.randn(n, generator=torch.Generator().manual_seed(args.seed))
        values = values_t.numpy()
        for k in args.k:
            console.print(f"n={n:,} k={k}: slimkit kmeans_1d x{args.repeats}")
            times, (c, lab) = timed(args.repeats, kmeans_1d, values_t, k, seed=args.seed)
            ours = {"impl": "slimkit.kmeans_1d", "n": n, "k": k, "times_s": times,
                    "median_s": statistics.median(times), "inertia": sse(values, c, lab)}
            rows.append(ours)
            if n <= args.sklearn_max_size:
                console.print(f"n={n:,} k={k}: sklearn KMeans x{args.repeats}")
                times, (c, lab) = timed(args.repeats, run_sklearn, values, k, args.seed)
                # Inertia recomputed in float64 from sklearn's own centres and labels, the
                # same way as ours (sklearn reports it in the input's float32).
                ref = {"impl": "sklearn.KMeans", "n": n, "k": k, "times_s": times,
                       "median_s": statistics.median(times), "inertia": sse(values, c, lab)}
                rows.append(ref)
                ours["inertia_ratio_vs_sklearn"] = ours["inertia"] / ref["inertia"]
                ours["speedup_vs_sklearn"] = ref["median_s"] / ours["median_s"]

    per_channel = None
    n_rows, n_cols, pk = args.per_channel
    if n_rows > 0:
        console.print(f"per-channel {n_rows}x{n_cols} k={pk} x{args.repeats}")
        w = torch.randn(n_rows, n_cols, generator=torch.Generator().manual_seed(args.seed))
        times, _ = timed(args.repeats, kmeans_1d_per_channel, w, pk, seed=args.seed)
        per_channel = {"impl": "slimkit.kmeans_1d_per_channel", "shape": [n_rows, n_cols],
                       "k": pk, "times_s": times, "median_s": statistics.median(times)}

    table = Table(title=f"1-D k-means on N(0,1) float32 weights (median of {args.repeats})")
    for col in ("function", "weights", "k", "time s", "inertia", "/ sklearn", "speedup"):
        table.add_column(col, justify="left" if col == "function" else "right", no_wrap=True)
    for r in rows:
        ratio = r.get("inertia_ratio_vs_sklearn")
        speedup = r.get("speedup_vs_sklearn")
        name = r["impl"].replace("slimkit.", "").replace(".", " ")
        table.add_row(name, f"{r['n']:,}", str(r["k"]), f"{r['median_s']:.3f}",
                      f"{r['inertia']:.6g}", "-" if ratio is None else f"{ratio:.4f}",
                      "-" if speedup is None else f"{speedup:.0f}x")
    if per_channel:
        shape = "x".join(map(str, per_channel["shape"]))
        table.add_row("kmeans_1d_per_channel", shape, str(pk), f"{per_channel['median_s']:.3f}",
                      "-", "-", "-")
    console.print(table)

    payload = {
        "benchmark": "kmeans_speed",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": {
            "python": sys.version.split()[0], "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "numpy": np.__version__,
            "sklearn": sklearn.__version__,
        },
        "results": rows,
        "per_channel": per_channel,
    }
    write_json_atomically(args.out, payload)
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
