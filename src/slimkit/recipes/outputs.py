"""What a recipe run leaves behind: report.json, report.md and PNG plots (all atomic writes).

- ``report.json``: the recipe, one row per phase (metrics, sizes, sparsity, unique values,
  per-layer statistics, steps, seconds, the config used, what was evaluated), the final
  artifact's ``DeploymentReport`` (with ONNX Runtime latency) and its ratios to the baseline.
- ``report.md``: the same as tables, with the plots.
- ``stages.png``: accuracy (every metric of the eval function) and zipped size per phase.
- ``sparsity.png``: sparsity of every weight tensor after each phase.
- ``layers.png``: sparsity and unique values per weight tensor of the final artifact.

Example:
    >>> report = write_outputs(out, recipe, task, history, out / "model.onnx")
    >>> report["final"]["zipped_bytes"]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import slimkit as sk
from slimkit.core.io import atomic_path

REPORT_FORMAT = "slimkit.recipe-report"
PLOTS = ("stages.png", "sparsity.png", "layers.png")


def write_outputs(out: Path, recipe, task, history: list[dict], artifact: Path, *,
                  max_steps: int | None = None, resumed_from: int | None = None) -> dict:
    """Measure the final artifact and write report.json, report.md and the plots."""
    final = sk.report(artifact, task.example_inputs, eval_fn=task.eval_fn,
                      latency_runs=recipe.report.latency_runs, threads=recipe.report.threads,
                      memory=False, name=recipe.name)
    ratios = None
    base_file = history[0].get("artifact")
    if base_file:
        base = sk.report(out / base_file, task.example_inputs,
                         latency_runs=recipe.report.latency_runs,
                         threads=recipe.report.threads, memory=False, name="baseline")
        ratios = base.compare(final)
    report = {
        "format": REPORT_FORMAT,
        "version": 1,
        "recipe": recipe.name,
        "description": recipe.description,
        "source": recipe.source,
        "seed": recipe.seed,
        "max_steps": max_steps,
        "resumed_from_phase": resumed_from,
        "evaluate": recipe.evaluate,
        "stages": history,
        "artifact": artifact.name,
        "final": final.to_dict(),
        "baseline_over_final": ratios,
        "plots": list(PLOTS),
    }
    with atomic_path(out / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    _plot_stages(out / "stages.png", history)
    _plot_sparsity(out / "sparsity.png", history)
    final.plot(out / "layers.png")
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(markdown(report))
    return report


def markdown(report: dict) -> str:
    """report.md's text from the report dict."""
    rows = report["stages"]
    keys = sorted({k for r in rows for k in r["metrics"]})
    base_zip = rows[0]["zipped_bytes"]
    lines = [f"# slimkit run: {report['recipe']}", ""]
    if report["description"]:
        lines += [report["description"], ""]
    lines += [
        f"Recipe `{report['source']}`, seed {report['seed']}"
        + (f", short run: at most {report['max_steps']} steps per phase"
           if report["max_steps"] else "")
        + (f", resumed at phase {report['resumed_from_phase']}"
           if report["resumed_from_phase"] is not None else "") + ".",
        "",
        f"## Phases (measured on the {rows[0]['evaluated_on']} after each phase)",
        "",
        "| phase | stage | technique | steps | seconds | " + " | ".join(keys)
        + " | sparsity | unique values | zipped bytes | zipped x smaller than baseline |",
        "|" + "---|" * (9 + len(keys)),
    ]
    for r in rows:
        metrics = " | ".join(f"{r['metrics'].get(k, float('nan')):.4f}" for k in keys)
        lines.append(
            f"| {r['phase']} | {r['name']} | {r['technique'] or '-'} | {r['steps']} | "
            f"{r['seconds']:.1f} | {metrics} | {r['sparsity']:.3f} | {r['unique_values']:,} | "
            f"{r['zipped_bytes']:,} | {base_zip / r['zipped_bytes']:.2f}x |"
        )
    final = report["final"]
    lines += ["", f"## Artifact `{report['artifact']}` (ONNX Runtime)", "",
              "| metric | value |", "|---|---|"]
    for k, v in final["metrics"].items():
        lines.append(f"| {k} | {v:.4f} |")
    lines += [
        f"| raw size | {final['raw_bytes']:,} B |",
        f"| zipped size | {final['zipped_bytes']:,} B |",
        f"| sparsity (weight tensors) | {final['sparsity']:.3f} |",
        f"| unique weight values | {final['unique_values']:,} |",
    ]
    if final.get("latency"):
        lat = final["latency"]
        lines.append(f"| latency p50 | {lat['p50_ms']:.3f} ms |")
    ratios = report["baseline_over_final"]
    if ratios:
        # Each figure as baseline / artifact, with what a value above 1 means.
        lines += ["", "## Baseline / artifact", "", "| quantity | baseline / artifact |",
                  "|---|---|"]
        lines += [f"| {_ratio_label(k)} | {v:.2f}x |" for k, v in ratios.items() if v == v]
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in report["plots"]] + [""]
    return "\n".join(lines)


_RATIO_LABELS = {
    "parameters": "parameters (above 1: fewer in the artifact)",
    "nonzero": "non-zero weights (above 1: fewer in the artifact)",
    "unique_values": "unique weight values (above 1: fewer in the artifact)",
    "raw_bytes": "raw size (above 1: the artifact is smaller)",
    "zipped_bytes": "zipped size (above 1: the artifact is smaller)",
    "entropy_bound_bytes": "entropy bound (above 1: the artifact is smaller)",
    "latency_p50_ms": "latency p50 (above 1: the artifact is faster)",
    "latency_p90_ms": "latency p90 (above 1: the artifact is faster)",
    "peak_mb": "peak memory (above 1: the artifact uses less)",
}


def _ratio_label(key: str) -> str:
    return _RATIO_LABELS.get(key, f"{key} (baseline value / artifact value)")


def _figure(width: float, height: float):
    # A Figure with its own Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _plot_stages(path: Path, rows: list[dict]) -> None:
    names = [r["name"] for r in rows]
    keys = sorted({k for r in rows for k in r["metrics"]})
    x = np.arange(len(rows))
    fig = _figure(max(6.0, 1.2 * len(rows) + 3), 4)
    left, right = fig.subplots(1, 2)
    for key in keys:
        left.plot(x, [r["metrics"].get(key, np.nan) for r in rows], marker="o", label=key)
    left.set_xticks(x, names, rotation=20)
    left.set_title("metrics per phase")
    left.set_ylabel(", ".join(keys) if keys else "metric")
    values = [r["metrics"][k] for r in rows for k in keys if k in r["metrics"]]
    if values and all(0.0 <= v <= 1.0 for v in values):
        # Shares (accuracy, agreement): the whole 0..1 axis, so a 0.8-point drop reads as
        # the small change it is rather than a cliff.
        left.set_ylim(0.0, 1.05)
    left.legend()
    bars = right.bar(x, [r["zipped_bytes"] / 1024 for r in rows], color="tab:orange")
    right.bar_label(bars, fmt="%.1f", fontsize=8)
    right.set_xticks(x, names, rotation=20)
    right.set_ylabel("KiB")
    right.set_title("zipped size per phase")
    fig.suptitle(f"after each phase (measured on the {rows[0]['evaluated_on']})")
    _save(fig, path)


def _plot_sparsity(path: Path, rows: list[dict]) -> None:
    # Layers are matched by position: an int8 export renames initializers, not their order.
    count = len(rows[-1]["layers"])
    shown = [r for r in rows if len(r["layers"]) == count]
    names = [layer["name"] for layer in shown[0]["layers"]]
    fig = _figure(max(6.0, 0.9 * count * max(1, len(shown)) / 2 + 3), 4)
    ax = fig.subplots()
    width = 0.8 / max(1, len(shown))
    x = np.arange(count)
    for i, r in enumerate(shown):
        ax.bar(x + i * width, [100 * layer["sparsity"] for layer in r["layers"]], width,
               label=r["name"])
    ax.set_xticks(x + width * (len(shown) - 1) / 2, names, rotation=20, fontsize=8)
    ax.set_ylabel("sparsity (% zeros)")
    ax.set_ylim(0, 100)
    ax.set_yticks(range(0, 101, 20))
    # The legend goes outside the axes: the axis stops at 100%.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.set_title("sparsity per weight tensor after each phase")
    _save(fig, path)
