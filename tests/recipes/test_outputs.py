"""The plots of ``slimkit run`` keep their scales honest (issue 16, "Smaller": stages.png
zoomed so a 0.8-point drop looked like a cliff, without an axis label; sparsity.png ran to
120%)."""

from __future__ import annotations

from slimkit.recipes import outputs


def rows():
    layers = [{"name": "c1.weight", "sparsity": s} for s in (0.0, 0.0)]
    pruned = [{"name": "c1.weight", "sparsity": s} for s in (0.8, 0.8)]
    return [
        {"name": "baseline", "metrics": {"accuracy": 0.981}, "zipped_bytes": 160_000,
         "evaluated_on": "ONNX Runtime artifact", "layers": layers},
        {"name": "prune", "metrics": {"accuracy": 0.973}, "zipped_bytes": 50_000,
         "evaluated_on": "ONNX Runtime artifact", "layers": pruned},
    ]


def captured(monkeypatch, plot):
    figures = []
    monkeypatch.setattr(outputs, "_save", lambda fig, path: figures.append(fig))
    plot(None, rows())
    return figures[0]


def test_stages_plot_shows_accuracy_on_its_whole_scale_with_a_label(monkeypatch):
    left = captured(monkeypatch, outputs._plot_stages).axes[0]
    assert left.get_ylim() == (0.0, 1.05)
    assert left.get_ylabel() == "accuracy"


def test_sparsity_plot_stops_at_100_percent(monkeypatch):
    ax = captured(monkeypatch, outputs._plot_sparsity).axes[0]
    assert ax.get_ylim() == (0.0, 100.0)
    assert max(ax.get_yticks()) <= 100
