"""DeploymentReport: what a model costs to ship and run, and how accurate the shipped form is.

`report()` measures an ONNX artifact (or a module, exported to one) in ONNX Runtime, so that
size, latency, memory and accuracy are those of what is deployed, not of the training model.
"""

from __future__ import annotations

import copy
import io
import json
import numbers
import os
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx.external_data_helper import load_external_data_for_model, uses_external_data
from rich.console import Console
from rich.table import Table
from torch import nn

from slimkit.metrics._inputs import InputSpec, bind_inputs, input_specs, random_inputs
from slimkit.metrics.latency import cpu_session, measure_latency
from slimkit.metrics.memory import peak_inference_memory
from slimkit.metrics.sizes import file_size, zipped_size
from slimkit.metrics.weights import (
    WeightInventory,
    WeightStats,
    _onnx_tensors,
    onnx_weight_inventory,
    tensor_weight_inventory,
)

FORMAT_VERSION = 1

# (label, key in compare(), getter, unit, word when baseline/optimized >= 1, word when < 1)
_ROWS = [
    ("Parameters", "parameters", lambda r: r.parameters, "count", "fewer", "more"),
    ("Non-zero parameters", "nonzero", lambda r: r.nonzero, "count", "fewer", "more"),
    ("Unique weight values", "unique_values", lambda r: r.unique_values, "count", "fewer",
     "more"),
    ("Raw size", "raw_bytes", lambda r: r.raw_bytes, "bytes", "smaller", "larger"),
    ("Zipped size", "zipped_bytes", lambda r: r.zipped_bytes, "bytes", "smaller", "larger"),
    ("Entropy bound", "entropy_bound_bytes", lambda r: r.entropy_bound_bytes, "bytes",
     "smaller", "larger"),
    ("Latency p50", "latency_p50_ms", lambda r: (r.latency or {}).get("p50_ms"), "ms",
     "faster", "slower"),
    ("Latency p90", "latency_p90_ms", lambda r: (r.latency or {}).get("p90_ms"), "ms",
     "faster", "slower"),
    ("Peak memory", "peak_mb", lambda r: (r.memory or {}).get("peak_mb"), "mib", "less",
     "more"),
]


@dataclass
class DeploymentReport:
    """Deployment metrics of one model or artifact; build it with `report()`.

    Counts: `parameters` and `nonzero` cover every stored numeric tensor (biases included);
    `sparsity`, `unique_values` and `entropy_bound_bytes` cover the weight tensors only
    (ndim >= 2: what pruning and clustering act on), as do the per-tensor `layers`.
    Sizes are in bytes, latency in milliseconds, memory in MiB. `metrics` holds the result of
    the user's `eval_fn`.

    Example:
        >>> rep = report("model.onnx", x, eval_fn=accuracy)  # doctest: +SKIP
        >>> print(rep)  # doctest: +SKIP
        >>> rep.to_json("model_report.json")  # doctest: +SKIP
    """

    name: str
    source: str
    parameters: int
    nonzero: int
    sparsity: float
    layers: list[WeightStats]
    unique_values: int
    raw_bytes: int
    zipped_bytes: int
    entropy_bound_bytes: float
    latency: dict | None = None
    memory: dict | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    artifact: str | None = None

    # ---- serialization -------------------------------------------------------------------

    def to_dict(self) -> dict:
        """A JSON-ready dict; `from_dict` reads it back."""
        data = {key: value for key, value in self.__dict__.items() if key != "layers"}
        data["layers"] = [layer.to_dict() for layer in self.layers]
        return {"version": FORMAT_VERSION, **copy.deepcopy(data)}

    @classmethod
    def from_dict(cls, data: Mapping) -> DeploymentReport:
        """Rebuild a report from `to_dict()` output (or from the JSON of `to_json`)."""
        data = dict(data)
        version = data.pop("version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise ValueError(
                f"report format version {version} is newer than this slimkit reads "
                f"(version <= {FORMAT_VERSION}); upgrade slimkit"
            )
        data["layers"] = [WeightStats.from_dict(layer) for layer in data.get("layers", [])]
        return cls(**data)

    def to_json(self, path: str | Path | None = None) -> str:
        """The report as JSON text; with `path`, also written there atomically.

        Example:
            >>> text = rep.to_json("report.json")  # doctest: +SKIP
            >>> DeploymentReport.from_dict(json.loads(text)) == rep  # doctest: +SKIP
            True
        """
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            _write_atomically(Path(path), text.encode("utf-8"))
        return text

    # ---- comparison ----------------------------------------------------------------------

    def compare(self, other: DeploymentReport) -> dict[str, float]:
        """Ratios self / other for counts, sizes, latency and memory.

        Called as `baseline.compare(optimized)`, a ratio of 4.0 for `zipped_bytes` means the
        optimized model zips 4x smaller, and 2.0 for `latency_p50_ms` means it runs 2x faster.
        Keys: parameters, nonzero, unique_values, raw_bytes, zipped_bytes,
        entropy_bound_bytes, latency_p50_ms, latency_p90_ms, peak_mb; a key is left out when
        either report lacks the figure. Metrics (accuracy) are differences, not ratios: see
        `compare_table`.

        Example:
            >>> ratios = baseline.compare(optimized)  # doctest: +SKIP
            >>> print(f"{ratios['zipped_bytes']:.1f}x smaller zipped")  # doctest: +SKIP
            3.9x smaller zipped
        """
        ratios = {}
        for _label, key, get, *_ in _ROWS:
            mine, theirs = get(self), get(other)
            if mine is None or theirs is None:
                continue
            ratios[key] = _ratio(mine, theirs)
        return ratios

    # ---- rendering -----------------------------------------------------------------------

    def table(self) -> Table:
        """The summary as a rich Table (print it with rich, or `print(report)`)."""
        table = Table(title=f"Deployment report: {self.name}", title_justify="left")
        table.add_column("Metric")
        table.add_column("Value", justify="right")
        for label, _key, get, unit, *_ in _ROWS:
            value = get(self)
            if value is None:
                continue
            text = _format(value, unit)
            if label == "Unique weight values" and self.layers:
                text += f" ({len(self.layers)} weight tensors)"
            table.add_row(label, text)
            if label == "Non-zero parameters":
                table.add_row("Weight sparsity", _format(self.sparsity, "fraction"))
            if label == "Entropy bound":
                table.add_row("Entropy (bits per weight)", f"{self.bits_per_weight:.3f}")
        if self.latency:
            table.add_row(
                "Latency setting",
                f"batch {self.latency['batch']}, {self.latency['threads']} threads, "
                f"{self.latency['runs']} runs",
            )
        if self.memory:
            table.add_row("Session memory", _format(self.memory["session_mb"], "mib"))
        for key, value in self.metrics.items():
            table.add_row(key, f"{value:.4f}")
        return table

    def layers_table(self) -> Table:
        """One row per weight tensor: shape, dtype, sparsity, unique values, entropy."""
        table = Table(title=f"Weight tensors: {self.name}", title_justify="left")
        for column in ("Tensor", "Shape", "Dtype", "Params", "Sparsity", "Unique",
                       "Bits/value"):
            table.add_column(column, justify="left" if column == "Tensor" else "right")
        for s in self.layers:
            bits = 8 * s.entropy_bytes / s.params if s.params else 0.0
            table.add_row(
                s.name, "x".join(map(str, s.shape)), s.dtype, f"{s.params:,}",
                _format(s.sparsity, "fraction"), f"{s.unique:,}", f"{bits:.3f}",
            )
        return table

    def compare_table(
        self, other: DeploymentReport, names: tuple[str, str] = ("baseline", "optimized")
    ) -> Table:
        """Two reports side by side: `self` is the baseline, `other` the optimized model.

        The last column reads baseline/optimized for counts, sizes and latency ("4.00x
        smaller", "1.80x faster") and optimized - baseline for sparsity and metrics. A metric
        whose two values both lie in [0, 1] (an accuracy) is shown in percentage points.

        Example:
            >>> from rich import print as rprint  # doctest: +SKIP
            >>> rprint(dense.compare_table(pruned, names=("dense", "pruned")))  # doctest: +SKIP
        """
        table = Table(title=f"{names[0]} vs {names[1]}", title_justify="left")
        table.add_column("Metric")
        table.add_column(names[0], justify="right")
        table.add_column(names[1], justify="right")
        table.add_column("Change", justify="right")
        ratios = self.compare(other)
        for label, key, get, unit, better, worse in _ROWS:
            mine, theirs = get(self), get(other)
            if mine is None and theirs is None:
                continue
            change = ""
            if key in ratios:
                ratio = ratios[key]
                if ratio >= 1:
                    change = f"{ratio:.2f}x {better}"
                elif ratio > 0:
                    change = f"{1 / ratio:.2f}x {worse}"
            table.add_row(label, _format(mine, unit), _format(theirs, unit), change)
            if label == "Non-zero parameters":
                table.add_row(
                    "Weight sparsity", _format(self.sparsity, "fraction"),
                    _format(other.sparsity, "fraction"),
                    f"{100 * (other.sparsity - self.sparsity):+.2f} pts",
                )
        for key in list(self.metrics) + [k for k in other.metrics if k not in self.metrics]:
            mine, theirs = self.metrics.get(key), other.metrics.get(key)
            change = ""
            if mine is not None and theirs is not None:
                delta = theirs - mine
                if 0 <= mine <= 1 and 0 <= theirs <= 1:
                    change = f"{100 * delta:+.2f} pts"
                else:
                    change = f"{delta:+.4g}"
            table.add_row(key, _format(mine, "metric"), _format(theirs, "metric"), change)
        settings = {
            (r.latency["batch"], r.latency["threads"]) for r in (self, other) if r.latency
        }
        if len(settings) > 1:
            table.caption = "latency measured with different batch sizes or thread counts"
        return table

    def __rich__(self) -> Table:
        return self.table()

    def __str__(self) -> str:
        buffer = io.StringIO()
        Console(file=buffer, width=100, color_system=None, force_terminal=False).print(
            self.table()
        )
        return buffer.getvalue()

    # ---- plot ----------------------------------------------------------------------------

    def plot(self, path: str | Path) -> Path:
        """Write a PNG of sparsity and unique values per weight tensor; returns the path.

        Example:
            >>> rep.plot("layers.png")  # doctest: +SKIP
            PosixPath('layers.png')
        """
        # Figure with its own Agg canvas: no pyplot global state, no display needed.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        if not self.layers:
            raise ValueError(f"report '{self.name}' has no weight tensors to plot")
        names = [s.name for s in self.layers]
        positions = np.arange(len(names))
        fig = Figure(figsize=(10, max(2.5, 0.35 * len(names) + 1.5)), layout="constrained")
        FigureCanvasAgg(fig)
        left, right = fig.subplots(1, 2, sharey=True)
        bars = left.barh(positions, [100 * s.sparsity for s in self.layers], color="tab:blue")
        left.bar_label(bars, fmt="%.1f%%", padding=2, fontsize=8)
        left.set_xlim(0, 110)
        left.set_xlabel("sparsity (% zeros)")
        left.set_yticks(positions, names)
        left.invert_yaxis()
        uniques = [max(s.unique, 1) for s in self.layers]
        bars = right.barh(positions, uniques, color="tab:orange")
        right.bar_label(bars, labels=[f"{u:,}" for u in uniques], padding=2, fontsize=8)
        right.set_xscale("log")
        # Bars grow from 1 (a constant tensor): an automatic limit would start them mid-axis.
        right.set_xlim(1, max(uniques) * 10)
        right.set_xlabel("unique values (log scale)")
        fig.suptitle(f"{self.name}: weight tensors")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        path = Path(path)
        _write_atomically(path, buffer.getvalue())
        return path

    @property
    def bits_per_weight(self) -> float:
        """Entropy bound per weight value, in bits (log2(n) when all n weights differ)."""
        count = sum(s.params for s in self.layers)
        return 8 * self.entropy_bound_bytes / count if count else 0.0


def report(
    target: str | os.PathLike | nn.Module,
    example_inputs=None,
    *,
    eval_fn: Callable[[Callable], float | Mapping[str, float]] | None = None,
    batch_size: int | None = None,
    threads: int = 2,
    latency_runs: int = 100,
    warmup: int = 10,
    memory: bool = True,
    name: str | None = None,
) -> DeploymentReport:
    """Measure a deployment artifact: size, zipped size, entropy bound, latency, memory, accuracy.

    `target` is the path of an .onnx file, or an nn.Module. A module with `example_inputs` is
    exported with `slimkit.export.export_onnx` to a temporary file and that file is measured;
    a module without them gets weight and size statistics of its stripped state_dict only.

    `example_inputs` (a tensor, array, tuple of them, or a dict of keyword arguments) feed
    latency and memory; with `batch_size` they are repeated along dim 0 to that many rows. Without them, inputs are
    random, with dynamic dims set to `batch_size` (first dim) or 1.
    `eval_fn(predict)` returns a float or a dict of floats; `predict(*tensors)` runs the
    artifact in ONNX Runtime (torch tensors in and out, any batch size), or for a module
    without example inputs the stripped module under torch.no_grad in eval mode.
    `latency_runs=0` skips latency; `memory=False` skips the memory probe.

    Example:
        >>> rep = report("model.onnx", x, eval_fn=lambda p: acc(p(X), y))  # doctest: +SKIP
        >>> print(rep)  # doctest: +SKIP
        >>> rich.print(rep.compare_table(report("pruned.onnx", x)))  # doctest: +SKIP
    """
    if isinstance(target, nn.Module):
        if example_inputs is None:
            if batch_size is not None:
                raise ValueError(
                    "batch_size is used for latency, which needs example_inputs: pass "
                    "report(model, example_inputs, batch_size=...)"
                )
            return _report_module(target, eval_fn, name or type(target).__name__)
        export_onnx = _import_export_onnx()
        with tempfile.TemporaryDirectory(prefix="slimkit-report-") as tmp:
            path = export_onnx(target, Path(tmp) / "model.onnx", example_inputs=example_inputs)
            result = _report_onnx(
                Path(path), example_inputs, eval_fn, batch_size, threads, latency_runs,
                warmup, memory, name or type(target).__name__,
            )
        # The artifact lived in a temporary folder: there is no file to point to.
        result.artifact = None
        return result
    if isinstance(target, (str, os.PathLike)):
        path = _check_onnx_path(target)
        return _report_onnx(
            path, example_inputs, eval_fn, batch_size, threads, latency_runs, warmup, memory,
            name or path.stem,
        )
    raise TypeError(
        "report target must be a path to an .onnx file or a torch.nn.Module, "
        f"got {type(target).__name__}"
    )


def _report_onnx(
    path: Path, example_inputs, eval_fn, batch_size, threads, latency_runs, warmup, memory,
    name,
) -> DeploymentReport:
    model, files = _load_with_external_data(path)
    specs = input_specs(model)
    # Inputs first: a mismatch should fail before the slow measurements.
    if example_inputs is not None:
        feeds = bind_inputs(specs, example_inputs, batch_size)
    else:
        feeds = random_inputs(specs, batch_size)
    inventory = onnx_weight_inventory(model)
    del model
    latency = None
    if latency_runs:
        latency = measure_latency(path, feeds, threads=threads, warmup=warmup,
                                  runs=latency_runs)
    peak = peak_inference_memory(path, feeds, threads=threads) if memory else None
    metrics = {}
    if eval_fn is not None:
        metrics = _run_eval(eval_fn, _onnx_predict(cpu_session(path, threads), specs))
    return _build(
        inventory, name=name, source="onnx",
        raw_bytes=sum(file_size(f) for f in files),
        zipped_bytes=sum(zipped_size(f) for f in files),
        latency=latency, memory=peak, metrics=metrics, artifact=str(path),
    )


def _report_module(model: nn.Module, eval_fn, name: str) -> DeploymentReport:
    baked = _stripped_copy(model)
    state = baked.state_dict()
    inventory = tensor_weight_inventory(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    metrics = {}
    if eval_fn is not None:
        baked.eval()
        metrics = _run_eval(eval_fn, _torch_predict(baked))
    return _build(
        inventory, name=name, source="torch", raw_bytes=len(data),
        zipped_bytes=zipped_size(data), latency=None, memory=None, metrics=metrics,
        artifact=None,
    )


def _build(inventory: WeightInventory, **fields) -> DeploymentReport:
    return DeploymentReport(
        parameters=inventory.parameters,
        nonzero=inventory.nonzero,
        sparsity=inventory.sparsity,
        layers=inventory.layers,
        unique_values=inventory.unique_values,
        entropy_bound_bytes=inventory.entropy_bound_bytes,
        **fields,
    )


def _check_onnx_path(target) -> Path:
    path = Path(target)
    accepted = "report() accepts the path of an existing .onnx file or a torch.nn.Module"
    if not path.exists():
        raise FileNotFoundError(f"report target {str(path)!r} does not exist; {accepted}")
    if not path.is_file() or path.suffix.lower() != ".onnx":
        raise ValueError(f"report target {str(path)!r} is not an .onnx file; {accepted}")
    return path


def _load_with_external_data(path: Path) -> tuple[onnx.ModelProto, list[Path]]:
    """The model with its weights, and every file the artifact consists of.

    Raises ValueError for a file that is not a readable ONNX model (empty, truncated,
    another format, or missing its external data), not protobuf's or ONNX Runtime's traceback.
    """
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:   # protobuf's DecodeError and friends: no common public base
        raise ValueError(f"{str(path)!r} is not a readable ONNX file: {e}") from e
    if not model.graph.node or not model.graph.output:
        # protobuf decodes an empty file (and some random bytes) as an empty model
        raise ValueError(f"{str(path)!r} is not a readable ONNX file: it has no graph")
    locations = sorted({
        entry.value
        for _, tensor in _onnx_tensors(model.graph) if uses_external_data(tensor)
        for entry in tensor.external_data if entry.key == "location"
    })
    missing = [loc for loc in locations if not (path.parent / loc).is_file()]
    if missing:
        raise ValueError(
            f"{str(path)!r} keeps its weights in {', '.join(missing)}, which is not beside it: "
            f"copy the .onnx file together with its data file"
        )
    if locations:
        load_external_data_for_model(model, str(path.parent))
    return model, [path, *(path.parent / location for location in locations)]


def _onnx_predict(session, specs: list[InputSpec]) -> Callable:
    # predict(x) / predict(x, y) by position, or predict(**batch) by graph input name.
    def predict(*tensors, **named):
        if named and tensors:
            raise TypeError("predict takes positional or keyword inputs, not both")
        outputs = session.run(None, bind_inputs(specs, named if named else tensors))
        outputs = tuple(torch.from_numpy(np.asarray(output)) for output in outputs)
        return outputs[0] if len(outputs) == 1 else outputs

    return predict


def _torch_predict(model: nn.Module) -> Callable:
    def predict(*tensors, **named):
        tensors = tuple(torch.as_tensor(t) for t in tensors)
        named = {k: torch.as_tensor(v) if v is not None else None for k, v in named.items()}
        with torch.no_grad():
            return model(*tensors, **named)

    return predict


def _run_eval(eval_fn, predict) -> dict[str, float]:
    result = eval_fn(predict)
    if isinstance(result, Mapping):
        metrics = {}
        for key, value in result.items():
            try:
                metrics[str(key)] = float(value)
            except (TypeError, ValueError) as error:
                raise TypeError(
                    f"eval_fn returned a dict whose value for {key!r} is "
                    f"{type(value).__name__}; each value must be a number"
                ) from error
        return metrics
    if _is_scalar(result):
        return {"eval": float(result)}
    raise TypeError(
        "eval_fn must return a float or a dict of floats (e.g. {'accuracy': 0.93}), "
        f"got {type(result).__name__}"
    )


def _is_scalar(value) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    if isinstance(value, np.ndarray):
        return value.size == 1
    return isinstance(value, (numbers.Real, np.generic))


def _import_export_onnx():
    try:
        from slimkit.export import export_onnx
    except ImportError as error:
        raise ImportError(
            "report(nn.Module, example_inputs) measures the model exported by "
            "slimkit.export.export_onnx, which could not be imported. Pass the path of an "
            ".onnx file instead, or call report(model) without example_inputs for state_dict "
            "statistics"
        ) from error
    return export_onnx


def _stripped_copy(model: nn.Module) -> nn.Module:
    # Imported here: slimkit.export pulls in the exporter, which report() on a file never needs.
    from slimkit.export.pipeline import deployable

    # The weights as stored (no export hooks): the state_dict statistics of the model itself.
    return deployable(model, hooks=False)


def _write_atomically(path: Path, data: bytes) -> None:
    # A reader never sees a half-written file: write beside the target, then rename over it.
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        # os.open with mode 0o666 gives the file the user's usual permissions (umask applies).
        with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as out:
            out.write(data)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _ratio(mine: float, theirs: float) -> float:
    if theirs == 0:
        return 1.0 if mine == 0 else float("inf")
    return mine / theirs


def _format(value, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "count":
        return f"{int(value):,}"
    if unit == "fraction":
        return f"{100 * value:.2f}%"
    if unit == "ms":
        return f"{value:.3f} ms"
    if unit == "mib":
        return f"{value:.1f} MiB"
    if unit == "bytes":
        for size, suffix in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
            if value >= size:
                return f"{value / size:.2f} {suffix}"
        return f"{value:.0f} B"
    return f"{value:.4f}"
