"""PNG plots of the search: the sensitivity of every unit, the Pareto front of candidates.

Example:
    >>> sensitivity_plot(sens, "sensitivity.png"); pareto_plot(result, "pareto.png")
"""

from __future__ import annotations

from pathlib import Path

from slimkit.core.io import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def sensitivity_plot(sens, path: str | Path) -> Path:
    """Grouped bars: a group per unit, a bar per setting (log scale for the proxy)."""
    plt = _pyplot()
    labels = sens.labels()
    units = [u["name"] for u in sens.units]
    by = {(r["unit"], r["label"]): r["score"] for r in sens.rows if r.get("score") is not None}
    # many settings (combinations): show the single-technique ones, which read as a legend
    if len(labels) > 12:
        labels = [lab for lab in labels if " + " not in lab][:12]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(units) * max(1, len(labels)) / 3), 4.0))
    width = 0.8 / max(1, len(labels))
    for j, label in enumerate(labels):
        xs = [i + j * width for i in range(len(units))]
        ys = [by.get((u, label), 0.0) for u in units]
        if sens.kind != "drop":
            ys = [max(y, 1e-12) for y in ys]
        ax.bar(xs, ys, width=width, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(units))])
    ax.set_xticklabels(units, rotation=45 if len(units) > 6 else 0, ha="right", fontsize=8)
    if sens.kind == "drop":
        ax.set_ylabel("metric drop (one unit compressed)")
        ax.axhline(0.0, color="black", linewidth=0.5)
    else:
        ax.set_yscale("log")
        ax.set_ylabel("relative output error (one unit compressed)")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Sensitivity per unit")
    fig.tight_layout()
    return _save(fig, plt, path)


def pareto_plot(result, path: str | Path) -> Path:
    """Objective (x) against metric (y): every candidate, the front as a line, the budget as
    a dashed line, the best candidate circled."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    scale = 1024.0 if result.objective == "size" else 1.0
    for kind, marker in (("uniform", "s"), ("search", "o")):
        pts = [c for c in result.candidates if c["kind"] == kind]
        ax.scatter([c["cost"] / scale for c in pts], [c["metric"] for c in pts], marker=marker,
                   alpha=0.6, label=f"{kind} candidates")
    front = sorted(result.front, key=lambda c: c["cost"])
    ax.plot([c["cost"] / scale for c in front], [c["metric"] for c in front], "-", color="C2",
            label="Pareto front")
    b = result.baseline
    ax.scatter([b["cost"] / scale], [b["metric"]], marker="*", s=120, color="black",
               label="fp32")
    ax.axhline(b["metric"] - result.allowed_drop, linestyle="--", color="gray",
               label="budget")
    best = result.best
    ax.scatter([best["cost"] / scale], [best["metric"]], s=200, facecolors="none",
               edgecolors="red", linewidths=2, label="best")
    ax.set_xscale("log")
    ax.set_xlabel("zipped artifact (KiB)" if result.objective == "size" else
                  "ORT latency p50 (ms)")
    ax.set_ylabel("metric (ORT artifact)")
    ax.legend(fontsize=7)
    ax.set_title("sk.optimize: candidates and Pareto front")
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig, plt, path) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
