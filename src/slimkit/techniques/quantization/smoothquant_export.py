"""SmoothQuant's export: every W8A8 Linear becomes QuantizeLinear -> MatMulInteger in ONNX.

``pre_export`` (on the export copy) notes each layer's int8 weight codes and per-channel
scales and its frozen input scale / zero point, and swaps the calibrating input quantizer for
:class:`StaticInputQuant`: the same fake quantization written as plain tensor arithmetic
(divide, round, add the zero point, clamp, subtract, multiply), which ``torch.export`` keeps
as it is, so the exported program computes exactly what the eager W8A8 model does.
``post_export`` then finds that arithmetic in front of each MatMul / Gemm on a quantized
weight and rewrites the pair:

    x -> QuantizeLinear(s_x, z_x) -> MatMulInteger(., W_int8, z_x) -> Cast -> Mul(s_x * s_w)

ONNX Runtime runs MatMulInteger with its u8s8 int8 GEMM (VNNI where the CPU has it); the
activation scale is a constant, so no per-call range reduction is needed (dynamic int8's
DynamicQuantizeLinear computes one on every call).

Example:
    >>> sk.quantize(model, SmoothQuantConfig(alpha=0.5), calibration=batches)
    >>> sk.export_onnx(model, "w8a8.onnx", example_inputs=ids)      # calls both hooks
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn as nn

from slimkit.core.parametrize import get_module
from slimkit.core.parametrize import register as register_parametrization
from slimkit.export.pipeline import drop_debug_metadata
from slimkit.techniques.quantization.activation import INPUT, ActivationQuantizer
from slimkit.techniques.quantization.export import _attr, _consumers, _find, _perm
from slimkit.techniques.quantization.fake_quant import (
    WeightFakeQuant,
    quantized_weights,
)

NOTES_KEY = "smoothquant"


class StaticInputQuant(nn.Module):
    """uint8 per-tensor fake quantization with a frozen scale / zero point, as plain tensor
    ops (``torch.export`` and ``torch.onnx`` keep them; the ONNX rewrite turns them into one
    QuantizeLinear with the same numbers)."""

    def __init__(self, scale: float, zero_point: int):
        super().__init__()
        self.scale, self.zero_point = float(scale), int(zero_point)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # round() is half-to-even in torch and in ONNX QuantizeLinear alike.
        q = torch.clamp(torch.round(x / self.scale) + self.zero_point, 0, 255)
        return (q - self.zero_point) * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale:.4g}, zero_point={self.zero_point}"


def weight_fake_quant(group: str = "") -> WeightFakeQuant:
    """The weight grid of SmoothQuant W8A8: int8, symmetric, per output channel, [-127, 127]."""
    return WeightFakeQuant(8, True, None, True, group=group)


def pre_export(model: nn.Module, ctx, layers: list[str], stripped: list[str]) -> None:
    """Note the int8 weights and input qparams of ``layers``; see the module docstring."""
    for name in stripped:
        # A stripped model holds weights already on their int8 grid: re-quantizing them
        # gives the same integers and scales, so the copy gets its weight fake-quant back.
        register_parametrization(model, [(name, "weight")], weight_fake_quant())
    wanted = {f"{n}.weight" for n in layers}
    notes = ctx.notes.setdefault(NOTES_KEY, {})
    idle = []
    for key, module, _p, q, scale, baked in quantized_weights(model):
        if key not in wanted:
            continue
        aq = module._modules.get(INPUT)
        if not isinstance(aq, ActivationQuantizer) or not bool(aq.calibrated):
            idle.append(key.rsplit(".", 1)[0])
            continue
        sx, zx = aq.qparams()
        notes[key] = {"q": q.numpy().astype(np.int8), "scale": scale.numpy().astype(np.float32),
                      "baked": baked.numpy(), "sx": float(sx), "zx": int(zx)}
        module._modules[INPUT] = StaticInputQuant(sx, zx)
    if idle and not notes:
        raise ValueError(
            f"smoothquant: {len(idle)} layer(s) were never calibrated (e.g. {idle[0]}): run "
            "sk.quantize(model, SmoothQuantConfig(...), calibration=batches) before exporting")
    if idle:
        # Layers calibration never reached (MultiheadAttention's out_proj is read without
        # calling it): int8-grid weights, float activations.
        warnings.warn(f"slimkit: smoothquant exports {len(idle)} never-calibrated layer(s) with "
                      f"float activations: {', '.join(idle)}", stacklevel=3)
        for name in idle:
            get_module(model, name)._modules.pop(INPUT, None)
    # ORT and torch agree up to float summation order before each QuantizeLinear; a value on
    # a rounding boundary then lands one activation step away, which later layers carry on.
    ctx.suggest_tolerance(5e-2, 5e-2)


def post_export(proto, ctx):
    notes = ctx.notes.get(NOTES_KEY, {})
    if not notes:
        return proto
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    missing = []
    for key, info in notes.items():
        init, transposed = _find(inits, key, info["baked"])
        if init is None or not _rewrite_static(graph, init.name, info, transposed):
            missing.append(key)
            continue
        graph.initializer.remove(init)
        del inits[init.name]
    if missing:
        raise ValueError(
            f"smoothquant: the exported graph reads {len(missing)} quantized weight(s) other than "
            f"through a MatMul / Gemm (e.g. {missing[0]}); they cannot run as MatMulInteger")
    drop_debug_metadata(proto)
    return proto


def _rewrite_static(graph, name: str, info: dict, transposed: bool) -> bool:
    """Turn every matmul on weight ``name`` into QuantizeLinear -> MatMulInteger -> Cast ->
    Mul. ``info["q"]`` is the torch layout [out, in]; the initializer is [in, out] if
    ``transposed``. False (graph untouched) if some use is not a matmul on it."""
    plans = []
    for node in _consumers(graph, name):
        args = list(node.input)
        plain = (_attr(node, "transA", 0) == 0 and _attr(node, "alpha", 1.0) == 1.0
                 and _attr(node, "beta", 1.0) == 1.0)
        if node.op_type == "Gemm" and args.index(name) == 1 and plain and (
                _attr(node, "transB", 0) == (0 if transposed else 1)):
            plans.append((node, args[0], args[2] if len(args) > 2 else None, node.output[0]))
        elif node.op_type == "MatMul" and transposed and args.index(name) == 1:
            plans.append((node, args[0], None, node.output[0]))
        elif node.op_type == "Transpose" and not transposed and _perm(node) == [1, 0]:
            users = _consumers(graph, node.output[0])
            if not users or any(u.op_type != "MatMul" or u.input[1] != node.output[0]
                                for u in users):
                return False
            plans.extend((u, u.input[0], None, u.output[0]) for u in users)
            plans.append((node, None, None, None))
        else:
            return False
    if not plans:
        return False
    from onnx import TensorProto, helper, numpy_helper

    b, zname, sname, oscale = (f"{name}_w8", f"{name}_x_zero", f"{name}_x_scale",
                               f"{name}_out_scale")
    graph.initializer.extend([
        numpy_helper.from_array(np.ascontiguousarray(info["q"].T).astype(np.int8), b),
        numpy_helper.from_array(np.array(info["zx"], dtype=np.uint8), zname),
        numpy_helper.from_array(np.array(info["sx"], dtype=np.float32), sname),
        numpy_helper.from_array((info["sx"] * info["scale"]).astype(np.float32), oscale),
    ])
    for k, (node, a, bias, out) in enumerate(plans):
        pos = list(graph.node).index(node)
        graph.node.remove(node)
        if a is None:
            continue
        a = _fake_quant_source(graph, a)
        p = f"{name}_sq{k}"
        new = [
            helper.make_node("QuantizeLinear", [a, sname, zname], [f"{p}_xq"]),
            helper.make_node("MatMulInteger", [f"{p}_xq", b, zname], [f"{p}_i32"]),
            helper.make_node("Cast", [f"{p}_i32"], [f"{p}_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{p}_f", oscale], [out if bias is None else f"{p}_y"]),
        ]
        if bias is not None:
            new.append(helper.make_node("Add", [f"{p}_y", bias], [out]))
        for j, n in enumerate(new):
            n.name = f"{p}_{n.op_type}_{j}"
            graph.node.insert(pos + j, n)
    _drop_dead(graph)
    return True


# The ops StaticInputQuant becomes in ONNX, between the float input and the MatMul.
_CHAIN = ("Mul", "Sub", "Clip", "Max", "Min", "Add", "Round", "Div", "Cast")


def _fake_quant_source(graph, tensor: str) -> str:
    """The float tensor in front of the fake-quant arithmetic that produced ``tensor``.

    Walks producers back through ``_CHAIN`` ops (at most 8) to the ``Div`` that starts it;
    returns ``tensor`` itself when that arithmetic is not there (the input then is float and
    QuantizeLinear quantizes it the same way)."""
    producer = {o: n for n in graph.node for o in n.output}
    seen_round, cur = False, tensor
    for _ in range(8):
        node = producer.get(cur)
        if node is None or node.op_type not in _CHAIN:
            return tensor
        seen_round |= node.op_type == "Round"
        if node.op_type == "Div":
            return node.input[0] if seen_round else tensor
        cur = node.input[0]
    return tensor


def _drop_dead(graph) -> None:
    """Remove nodes none of whose outputs is read (the replaced fake-quant arithmetic)."""
    outputs = {o.name for o in graph.output}
    freed: set[str] = set()
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if n.op_type in _CHAIN and not any(o in used
                                                                          for o in n.output)]
        if not dead:
            break
        for n in dead:
            freed.update(n.input)
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name in freed and i.name not in used]:
        graph.initializer.remove(init)


def calibrated_layers(model: nn.Module, layers: list[str]) -> list[str]:
    """The names in ``layers`` whose input quantizer holds a range."""
    out = []
    for name in layers:
        q = get_module(model, name)._modules.get(INPUT)
        if isinstance(q, ActivationQuantizer) and bool(q.calibrated):
            out.append(name)
    return out


def rewrite_float_graph(proto, float_model: nn.Module, quantized_model: nn.Module):
    """The W8A8 graph of ``quantized_model`` made from ``proto``, the ONNX graph of
    ``float_model`` (the same model before ``sk.quantize``), without tracing it again.

    SmoothQuant changes no op of the float graph, only values: the smoothed norm gains (and
    biases) are written into their initializers, and every quantized layer's MatMul, found by
    its float weight, is rewritten as :func:`post_export` does. What a benchmark of many
    settings on one 135M LLM needs (tracing it costs minutes per setting). Returns
    ``(proto, ctx)``.

    Example:
        >>> proto, ctx = rewrite_float_graph(onnx.load("fp32/model.onnx"), fp32, w8a8)
    """
    import copy

    from onnx import numpy_helper

    from slimkit.core.records import records
    from slimkit.export.pipeline import ExportContext

    work = copy.deepcopy(quantized_model)
    ctx = ExportContext(records=records(work))
    layers = [m for r in records(work) if r["technique"] == NOTES_KEY for m, _ in r["layers"]]
    pre_export(work, ctx, layers, [])
    floats = dict(float_model.named_modules())
    for key in ctx.notes[NOTES_KEY]:
        ctx.notes[NOTES_KEY][key]["baked"] = floats[key.rsplit(".", 1)[0]].weight.detach() \
            .float().numpy()
    quantized = {f"{n}.weight" for n in layers}
    float_params = dict(float_model.named_parameters())
    inits = {i.name: i for i in proto.graph.initializer}
    for name, p in quantized_model.named_parameters():
        base = name.replace(".parametrizations.weight.original", ".weight")
        if base in quantized or base not in float_params:
            continue
        new = p.detach().float().numpy()
        old = float_params[base].detach().float().numpy()
        if np.array_equal(new, old):
            continue
        # Exporters wrapping the model (the causal-LM decoder) prefix its names.
        init = inits.get(base) or inits.get(f"model.{base}")
        if init is None:
            same = [i for i in inits.values() if tuple(i.dims) == old.shape
                    and np.array_equal(numpy_helper.to_array(i), old)]
            if len(same) != 1:
                raise ValueError(f"cannot find the initializer of {base} in the float graph")
            init = same[0]
        users = sum(init.name in n.input for n in proto.graph.node)
        if users != 1:
            # The exporter shares equal constants: equal float norms became one initializer.
            raise ValueError(f"the float graph's initializer {init.name} (for {base}) is read "
                             f"by {users} nodes; export the smoothed model instead")
        init.CopyFrom(numpy_helper.from_array(new.astype(np.float32), init.name))
    return post_export(proto, ctx), ctx
