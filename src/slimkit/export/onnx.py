"""``sk.export_onnx``: write a deployable ONNX file, validated in ONNX Runtime first.

The model is deep-copied and stripped (the caller's prepared model is untouched), exported
with ``torch.onnx`` as a single file with a dynamic batch axis, run in ONNX Runtime on the
example inputs and compared with the stripped torch model. Only a file that agrees is moved
into place; on any error or interrupt nothing is left at ``path``.

Example:
    >>> sk.export_onnx(model, "model.onnx", example_inputs=torch.randn(8, 1, 8, 8))
    PosixPath('model.onnx')
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from slimkit.core.batch import call_model, check_inputs, describe, flatten_outputs, input_tensors
from slimkit.core.io import atomic_path
from slimkit.core.records import records
from slimkit.export.names import name_anonymous_weights
from slimkit.export.pipeline import ExportContext, deployable, finish


class ExportValidationError(RuntimeError):
    """The exported file's outputs in ONNX Runtime differ from the torch model's."""

    def __init__(self, message: str, max_abs_diff: float, output: str, layers=None):
        super().__init__(message)
        self.max_abs_diff = max_abs_diff
        self.output = output
        # Per-layer divergences (slimkit.export.validation.LayerDivergence), in execution
        # order, when the export could compare them.
        self.layers = list(layers or [])


def as_input_tuple(example_inputs) -> tuple:
    """Normalise ``example_inputs`` (a tensor, or a tuple/list of tensors) to a tuple."""
    inputs = check_inputs(example_inputs)
    if isinstance(inputs, dict):
        raise TypeError("expected a tensor or a tuple of tensors here, got a dict")
    return inputs if isinstance(inputs, tuple) else (inputs,)


def _shapes(inputs) -> str:
    return describe(inputs)


def run_torch(model: nn.Module, inputs) -> list[torch.Tensor]:
    """Run ``model`` on model inputs and return its outputs flattened to a list of tensors."""
    try:
        with torch.no_grad():
            out = call_model(model, inputs)
    except Exception as e:
        raise ValueError(
            f"example_inputs do not fit {type(model).__name__}: got input shape(s) "
            f"{_shapes(inputs)}; the model raised {type(e).__name__}: {e}"
        ) from e
    leaves = flatten_outputs(out)
    if not leaves:
        raise ValueError(f"{type(model).__name__} returned no tensor to export")
    return leaves


# Loggers of the exporter's stack whose notices say nothing about the user's model: the
# dynamo exporter's optional-operator notices (torchvision absent), and the ONNX optimizer's
# constant folding, which logs "Evaluation failed: cannot reshape array ..." at WARNING level
# whenever it tries (and declines) to fold a shape computation (every Hugging Face export).
QUIET_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def _quiet_exporter():
    # The exporter stack also emits deprecation warnings that say nothing about the model.
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _keep_batchnorm():
    """Keep the ONNX optimizer from folding BatchNorm into the convolution before it.

    The file then stores the weights the model has: a clustered, pruned or int8 conv weight
    stays clustered, sparse or int8 (folding multiplies each output channel by
    ``gamma / sqrt(var + eps)``: 16 clusters became 219 values per layer, and the int8 rewrite
    put the unfolded integers next to the folded bias). ONNX Runtime folds the BatchNorm into
    the convolution at session start (its basic-level ConvBNFusion), so the runtime graph and
    speed are those of a folded file.
    """
    try:
        import onnxscript.rewriter as rewriter
        from onnxscript.rewriter.rules.common import _fuse_batchnorm
    except ImportError:  # another onnxscript layout: its default rules apply
        yield
        return
    saved = rewriter._DEFAULT_REWRITE_RULES
    fold = set(map(id, _fuse_batchnorm.rules))
    rewriter._DEFAULT_REWRITE_RULES = tuple(r for r in saved if id(r) not in fold)
    try:
        yield
    finally:
        rewriter._DEFAULT_REWRITE_RULES = saved


def _tile_batch(inputs, n: int):
    def tile(x):
        return x.repeat(n, *([1] * (x.dim() - 1))) if x.dim() > 0 else x

    if isinstance(inputs, dict):
        return {k: tile(v) for k, v in inputs.items()}
    return tuple(tile(x) for x in inputs)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example_inputs,
    *,
    dynamo: bool | None = None,
    dynamic_batch: bool = True,
    opset_version: int | None = None,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    validate: bool = True,
    compact: bool = False,
    keep_metadata: bool = False,
) -> Path:
    """Strip a copy of ``model``, export it to ``path`` and check it in ONNX Runtime.

    Args:
        example_inputs (torch.Tensor | tuple[torch.Tensor, ...]): a tensor or tuple of
            tensors; their first dimension is the batch.
        dynamo: ``True`` uses the ``torch.export``-based exporter, ``False`` the TorchScript
            one, which is faster to run and handles some older models. Default (None): the
            TorchScript one for a model with recurrent layers (LSTM / GRU / RNN: 2.7x faster
            on a 3-layer LSTM encoder, 14 s against 38 s, with the same validation), else
            ``torch.export``.
        dynamic_batch: make dim 0 of every input and output a symbolic ``batch`` axis.
        atol: ONNX Runtime outputs must satisfy ``|ort - torch| <= atol + rtol*|torch|``
            (default 1e-4; techniques whose deployed arithmetic differs from float, such as
            int8, widen the default). A quantized file that fails it still passes when the
            RMS of ``ort - torch`` is within 3% of the output's RMS (or a few output
            quantization steps) and every clear top-1 is kept: int8 kernels and ORT's
            int4/int8 MatMul fusions round differently from the torch simulation. Setting
            ``atol`` or ``rtol`` keeps the element-wise criterion only.
        rtol: the relative part of that tolerance (default 1e-3, widened the same way).
        compact: ask techniques for their compact storage form where they have one.
        keep_metadata: keep the exporter's per-node debug annotations (torch stack traces,
            fx node names: ~1 KB per node, a fifth of a small int8 file); dropped by default.

    Raises:
        ValueError: the example inputs do not fit the model.
        ExportValidationError: ONNX Runtime disagrees with torch beyond the tolerance; the
            message gives the largest absolute difference and the layer whose output diverges
            first and most (``.layers``: each layer's divergence). Nothing is written.
    """
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"path must end in .onnx, got {str(path)!r}")
    inputs = check_inputs(example_inputs)
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    ctx = ExportContext(
        compact=compact,
        atol=1e-4 if atol is None else atol,
        rtol=1e-3 if rtol is None else rtol,
        user_tolerance=atol is not None or rtol is not None,
        records=records(model),
        keep_metadata=keep_metadata,
    )
    plain = deployable(model, ctx)
    reference = run_torch(plain, inputs)
    tensors = input_tensors(inputs)
    default_in = (list(inputs) if isinstance(inputs, dict) else
                  ["input"] if len(tensors) == 1 else [f"input_{i}" for i in range(len(tensors))])
    in_names = input_names or default_in
    out_names = output_names or (
        ["output"] if len(reference) == 1 else [f"output_{i}" for i in range(len(reference))]
    )
    if len(in_names) != len(tensors):
        raise ValueError(f"input_names has {len(in_names)} names for {len(tensors)} inputs")
    if len(out_names) != len(reference):
        raise ValueError(f"output_names has {len(out_names)} names for {len(reference)} outputs")

    if dynamo is None and any(isinstance(m, nn.RNNBase) for m in plain.modules()):
        try:
            proto = _export(plain, inputs, False, dynamic_batch, opset_version, in_names,
                            out_names)
        except RuntimeError:
            # Ops only torch.export handles (the quantized ops of int8 techniques): the
            # slower exporter, as for any other model.
            proto = _export(plain, inputs, True, dynamic_batch, opset_version, in_names,
                            out_names)
    else:
        proto = _export(plain, inputs, dynamo is not False, dynamic_batch, opset_version,
                        in_names, out_names)
    # Before the hooks: their rewrites name new initializers after the weights they replace.
    name_anonymous_weights(proto, plain)
    proto = finish(proto, ctx)
    with atomic_path(path, suffix=".onnx") as tmp:
        # The proto was rewritten in memory: one write, then validation of exactly that file.
        data = save_proto(proto, tmp)
        # The file holds it now: the in-memory copy (the size of the weights) would only add
        # to the validation's peak, ONNX Runtime's session being the other copy.
        del proto
        try:
            if validate:
                validate_onnx(tmp, tensors, reference, atol=ctx.atol, rtol=ctx.rtol,
                              names=out_names, quantized=ctx.quantized, model=plain,
                              model_inputs=inputs)
            if data is not None:
                _publish_external_data(tmp, data, path)
        except BaseException:
            if data is not None:
                data.unlink(missing_ok=True)
            raise
    return path


def _export(model, inputs, dynamo, dynamic_batch, opset, in_names, out_names):
    """Export to an in-memory ``onnx.ModelProto``."""
    import onnx

    kwargs = {"input_names": in_names, "output_names": out_names}
    if opset is not None:
        kwargs["opset_version"] = opset
    trace_inputs = inputs
    tensors = input_tensors(inputs)
    if dynamic_batch and dynamo:
        # torch.export specializes a dimension of size 1, which would freeze the batch axis.
        if any(x.dim() > 0 and x.shape[0] == 1 for x in tensors):
            trace_inputs = _tile_batch(inputs, 2)
        batch = torch.export.Dim("batch")
        if isinstance(inputs, dict):
            kwargs["dynamic_shapes"] = {k: ({0: batch} if v.dim() > 0 else None)
                                        for k, v in inputs.items()}
        else:
            kwargs["dynamic_shapes"] = tuple({0: batch} if x.dim() > 0 else None for x in inputs)
    elif dynamic_batch:
        axes = {n: {0: "batch"} for n in in_names}
        axes.update({n: {0: "batch"} for n in out_names})
        kwargs["dynamic_axes"] = axes
    args, kw = ((), trace_inputs) if isinstance(trace_inputs, dict) else (trace_inputs, None)
    if kw is not None:
        kwargs["kwargs"] = kw
    try:
        with _quiet_exporter(), _keep_batchnorm():
            if dynamo:
                program = torch.onnx.export(model, args, dynamo=True, external_data=False,
                                            verbose=False, **kwargs)
                return program.model_proto
            buffer = io.BytesIO()
            torch.onnx.export(model, args, buffer, dynamo=False, **kwargs)
            return onnx.load_from_string(buffer.getvalue())
    except Exception as e:
        raise RuntimeError(
            f"torch.onnx could not export {type(model).__name__} (dynamo={dynamo}): "
            f"{type(e).__name__}: {str(e)[:2000]}"
        ) from e


# protobuf refuses a message over 2 GiB; keep a margin for the graph itself.
PROTO_LIMIT = 2**31 - 2**26


def save_proto(proto, path) -> Path | None:
    """Write ``proto`` to ``path``; returns the external-data file, or None when there is none.

    A model over protobuf's 2 GiB limit keeps its weights in ``<file name>.data`` beside it
    (``path`` here is the atomic writer's temporary name: :func:`export_onnx` renames the data
    file after the model once the file is validated).
    """
    import onnx

    if proto.ByteSize() < PROTO_LIMIT:
        onnx.save(proto, str(path))
        return None
    data = Path(path).with_name(f"{Path(path).name}.data")
    onnx.save(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=data.name)
    # Tensors under onnx's size threshold stay inline: a graph may need no data file at all.
    return data if data.exists() else None


def _publish_external_data(tmp: Path, data: Path, final: Path) -> None:
    """Point ``tmp``'s tensors at ``<final name>.data`` and move ``data`` there.

    Only the small graph file is rewritten; the weights move by rename, so a re-export
    replaces ``model.onnx.data`` instead of leaving an orphan beside it.
    """
    import onnx

    target = final.with_name(f"{final.name}.data")
    graph = onnx.load(str(tmp), load_external_data=False)
    for tensor in _external_tensors(graph):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = target.name
    onnx.save(graph, str(tmp))
    os.replace(data, target)


def _external_tensors(proto):
    """Every tensor of ``proto`` stored as external data (initializers, constants, subgraphs)."""
    import onnx

    found, graphs = [], [proto.graph]
    while graphs:
        graph = graphs.pop()
        found.extend(graph.initializer)
        for node in graph.node:
            for attr in node.attribute:
                found.extend([attr.t] if attr.HasField("t") else [])
                found.extend(attr.tensors)
                graphs.extend([attr.g] if attr.HasField("g") else [])
                graphs.extend(attr.graphs)
    return [t for t in found if t.data_location == onnx.TensorProto.EXTERNAL]


def ort_session(path: str | os.PathLike, threads: int = 2, optimized_path: str | None = None):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if optimized_path:
        opts.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def validate_onnx(path, inputs: tuple, reference: list[torch.Tensor], *, atol: float, rtol: float,
                  names: list[str], quantized=None, model: nn.Module | None = None,
                  model_inputs=None) -> float:
    """Run ``path`` in ONNX Runtime and compare with ``reference``; returns the max abs diff.

    ``quantized`` (a :class:`slimkit.export.validation.QuantizedCheck`): an output that fails
    the element-wise tolerance may still pass on its RMS error against the output scale and
    the quantization step. When it fails and ``model`` (the torch model that computed
    ``reference``) and ``model_inputs`` are given, the error names the layer whose output
    diverges first and the one that diverges most.
    """
    from slimkit.export.validation import judge

    sess = ort_session(path)
    feeds = {i.name: x.detach().cpu().numpy() for i, x in zip(sess.get_inputs(), inputs)}
    outs = sess.run(None, feeds)
    if len(outs) != len(reference):
        raise ExportValidationError(
            f"ONNX Runtime returned {len(outs)} outputs, torch {len(reference)}", float("inf"), ""
        )
    verdict = judge(outs, reference, names, atol=atol, rtol=rtol, quantized=quantized)
    if verdict.passed:
        return verdict.worst
    message = verdict.message
    layers = []
    if model is not None and model_inputs is not None and np.isfinite(verdict.worst):
        layers, where = _diagnose(model, path, model_inputs, quantized)
        message += f". {where}" if where else ""
    raise ExportValidationError(f"{message}; the file was not written", verdict.worst,
                                verdict.output, layers=layers)


def _diagnose(model, path, model_inputs, quantized):
    """(per-layer divergences, one sentence) for a failed validation; never raises."""
    import onnx

    from slimkit.export.validation import describe_divergence, diagnose_layers

    try:
        layers = diagnose_layers(model, onnx.load(str(path)), model_inputs)
    except Exception as e:  # a diagnosis must not hide the validation error itself
        return [], f"(the per-layer comparison failed: {type(e).__name__}: {str(e)[:200]})"
    threshold = quantized.rel_rms if quantized is not None else 1e-3
    return layers, describe_divergence(layers, threshold)
