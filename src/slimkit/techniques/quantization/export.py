"""Export hooks: quantized torch model -> QDQ ONNX with int8 / int4 weight initializers.

``pre_export`` (on the export copy, before strip) notes every quantized weight's scale, puts
activation quantizers in export mode (ops that become QuantizeLinear / DequantizeLinear) and
suggests a validation tolerance of two output quantization steps. Strip then bakes the
fake-quantized weights: floats that are exactly ``integer * scale``.

``post_export`` replaces each such float initializer by integers + DequantizeLinear, so the
file is ~4x (int8) or ~8x (int4) smaller; ORT fuses DequantizeLinear -> Conv/Gemm ->
QuantizeLinear into QLinearConv / QGemm. In dynamic mode, MatMul/Gemm on a quantized weight
becomes DynamicQuantizeLinear -> MatMulInteger, which ORT runs as DynamicQuantizeMatMul, and
an LSTM becomes ORT's DynamicQuantizeLSTM (lstm_export).

Example:
    >>> sk.quantize(model, sk.QuantizationConfig(), calibration=x[:100])
    >>> sk.export_onnx(model, "int8.onnx", example_inputs=x[:8])   # calls both hooks
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch.nn as nn

from slimkit.core.parametrize import get_module
from slimkit.storage.intcodes import IntCodes, int_initializer
from slimkit.techniques.quantization.activation import (
    INPUT,
    OUTPUT,
    ActivationQuantizer,
    DynamicQuantizer,
    attach,
)
from slimkit.techniques.quantization.fake_quant import quantized_weights
from slimkit.techniques.quantization.lstm_export import rewrite_lstms

NOTES_KEY = "slimkit.techniques.quantization"


def stored_weights(model: nn.Module) -> dict[str, IntCodes]:
    """The integer codes of every fake-quantized weight, by stripped name (packed format)."""
    import torch

    # A weight stored (in, out) (HF Conv1D) has its codes in the (out, in) layout: the packed
    # format, which decodes codes in the tensor's own layout, keeps it as plain floats.
    return {key: IntCodes(q.to(torch.int8), scale.float(), p.bits, p.group_size)
            for key, _module, p, q, scale, _baked in quantized_weights(model)
            if p.input_axis == 1}


def _storage_bits(module: nn.Module, bits: int) -> int:
    """The ONNX container of a weight's integers: int8, or int4 for 3/4-bit weights read by a
    float op. A layer with quantized activations keeps low-bit weights in int8 so ORT runs its
    int8 kernels (QLinearConv / QGemm) on them; the values stay in the low-bit range."""
    if bits == 8:
        return 8
    static = isinstance(module._modules.get(INPUT), ActivationQuantizer) or isinstance(
        module._modules.get(OUTPUT), ActivationQuantizer) or getattr(module, "_sk_input_from",
                                                                      None)
    return 8 if static else 4


def pre_export(model: nn.Module, ctx) -> None:
    notes = ctx.notes.setdefault(NOTES_KEY, {})
    weights = notes.setdefault("weights", {})
    dynamic = _dynamic_stages(model)
    for key, module, p, q, scale, baked in quantized_weights(model):
        weights[key] = {
            "q": q.numpy().astype(np.int8), "scale": scale.numpy(), "baked": baked.numpy(),
            "bits": p.bits, "group_size": p.group_size, "narrow": p.narrow,
            # Any layer reading this weight runs dynamic int8 (a tied LM head reads the
            # embedding's table: its MatMul can run MatMulInteger on the table's int8 rows).
            "dynamic": id(p) in dynamic,
            "storage_bits": _storage_bits(module, p.bits),
            # A weight-only layer computes in float: see _rewrite_conv_weight.
            "float_op": _storage_bits(module, 4) == 4,
            # q / scale are (out, in); the torch weight (and the exporter's) is (in, out).
            "in_out": p.input_axis == 0,
            "lstm": isinstance(module, nn.LSTM),
        }

    out_scales = []
    quantizers = [(name, q) for name, module in model.named_modules()
                  for q in (module._modules.get(INPUT), module._modules.get(OUTPUT))
                  if isinstance(q, ActivationQuantizer)]
    idle = sorted({name for name, q in quantizers if not bool(q.calibrated)})
    if quantizers and len(idle) == len({name for name, _ in quantizers}):
        raise ValueError(
            f"the activation quantizers of {', '.join(idle[:5])}{' ...' if len(idle) > 5 else ''}"
            " were never calibrated: run sk.quantize(model, config, calibration=data) (or "
            "slimkit.techniques.quantization.calibrate) before exporting"
        )
    if idle:
        # Layers the calibration data never reached (e.g. MultiheadAttention's out_proj,
        # whose weight is read without calling the module): int8 weights, float activations.
        warnings.warn(
            f"slimkit: {len(idle)} layer(s) were never calibrated and export with int8 weights "
            f"but float activations: {', '.join(idle)}",
            stacklevel=3,
        )
    for _name, q in quantizers:
        if bool(q.calibrated):
            # Python numbers: torch.export cannot read tensor values while tracing.
            q.export = q.qparams()
    for module in model.modules():
        out_q = module._modules.get(OUTPUT)
        if isinstance(out_q, ActivationQuantizer) and out_q.export is not None:
            out_scales.append(out_q.export[0])
    # Layers whose input is another layer's quantized output get a Q/DQ with the producer's
    # parameters (exact on those values) so ORT sees a quantized input and fuses the op.
    for module in list(model.modules()):
        src = getattr(module, "_sk_input_from", None)
        if src and module._modules.get(INPUT) is None:
            producer_q = get_module(model, src)._modules[OUTPUT]
            q = copy.deepcopy(producer_q)
            q.relu_first = False
            attach(module, q, None)
    if out_scales:
        ctx.suggest_tolerance(2.0 * max(out_scales), 1e-3)
    # Int8 kernels (and ORT's DequantizeLinear + MatMul -> MatMulNBits fusion, which quantizes
    # the activations per block) differ from the torch simulation by rounding flips that add
    # up over the layers: judge the file by its error against the output and the step.
    dynamic = any(w["dynamic"] for w in weights.values())
    # Dynamic int8 quantizes each activation tensor with its own run-time range: on
    # all-MiniLM-L6-v2 the artifact and the torch simulation differ by 8% of the output RMS
    # (cosine 0.9967, each within 0.99 of fp32); static and weight-only files stay under 1%.
    ctx.expect_quantized(rel_rms=0.12 if dynamic else 0.03)
    if dynamic:
        # ORT's DynamicQuantizeLinear and the torch simulation agree up to float summation
        # order, which can flip a rounding: a few activation steps at the output.
        ctx.suggest_tolerance(5e-2, 5e-2)


def post_export(proto, ctx):
    weights = ctx.notes.get(NOTES_KEY, {}).get("weights", {})
    if not weights:
        return proto
    graph = proto.graph
    lstm_keys = [k for k, info in weights.items() if info.get("lstm")]
    if lstm_keys:
        n_lstm = rewrite_lstms(proto)
        n_layers = len(lstm_keys) // 2  # an input and a recurrent weight per layer/direction
        if n_lstm == 0:
            warnings.warn(
                f"slimkit: {n_layers} quantized LSTM weight pair(s) ({', '.join(lstm_keys[:2])} "
                "...) found no ONNX LSTM node with those weights in the exported graph; they "
                "stay float (export with dynamo=False, the TorchScript exporter, which writes "
                "ONNX LSTM nodes)", stacklevel=3)
    inits = {i.name: i for i in graph.initializer}
    int4 = False
    changed = []
    for name, info in weights.items():
        if info.get("lstm"):
            continue  # done above, on the exporter's LSTM nodes
        init, found_transposed = _find(inits, name, info["baked"])
        if init is None:
            continue  # the exporter turned it into something else: it stays float
        # Whether the initializer is [in, out] relative to q's [out, in]: the exporter stored
        # the torch weight transposed, or the torch weight itself is (in, out) (HF Conv1D).
        transposed = found_transposed != info.get("in_out", False)
        if not found_transposed and not _holds(init, info["baked"]):
            # The exporter changed this weight (e.g. folded a BatchNorm into it): its integers
            # would no longer compute what the file computes next to the exporter's bias.
            changed.append(name)
            continue
        q, scale = info["q"], np.asarray(info["scale"], dtype=np.float32)
        if info["dynamic"] and q.ndim == 2 and _rewrite_dynamic(graph, init.name, q, scale,
                                                                 transposed):
            # Forget it: an identical copy (TransformerEncoder clones its layers, and the
            # exporter shares equal constants) must not find this initializer again.
            graph.initializer.remove(init)
            del inits[init.name]
            ctx.mark_rewritten(init.name, "quantization")
            continue
        bits = info.get("storage_bits", info["bits"])
        int4 |= bits == 4
        done = (bits == 8 and _rewrite_gather(graph, init.name, q, scale, info)) or (
            bits == 8 and info["dynamic"] and _rewrite_tied_table(graph, init.name, q, scale,
                                                                  info)) or (
            info.get("float_op") and _rewrite_conv_weight(graph, init.name, q, scale, bits))
        if not done:
            IntCodes(q, scale, bits, info["group_size"]).add_dequantize(
                graph, init.name, transposed)
        graph.initializer.remove(init)
        del inits[init.name]
        ctx.mark_rewritten(init.name, "quantization")
    if changed:
        warnings.warn(
            f"slimkit: the ONNX exporter changed {len(changed)} quantized weight(s) before the "
            f"int8 rewrite ({', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}); "
            "they stay float in the file", stacklevel=3)
    _merge_duplicate_qdq(graph)
    _drop_noop_relus(graph)
    if int4:
        # INT4 initializers and blocked DequantizeLinear need opset 21; from opset 20 to 21
        # only type support changed, so raising it is safe.
        for op in proto.opset_import:
            if op.domain in ("", "ai.onnx") and op.version < 21:
                op.version = 21
    return proto


def _merge_duplicate_qdq(graph) -> None:
    """Merge QuantizeLinear / DequantizeLinear nodes that repeat the same op on one tensor.

    Two layers reading one quantized tensor (a block's output feeding both a conv and the
    shortcut conv) each re-quantize it with the same parameters. One node does the same, and
    a single-consumer Q/DQ pair lets ORT drop the round trip between its int8 kernels.
    """
    from onnx import numpy_helper

    consts = {i.name: numpy_helper.to_array(i).tobytes() for i in graph.initializer
              if np.prod(i.dims) <= 1}
    outputs = {o.name for o in graph.output}
    seen: dict = {}
    renamed: dict = {}
    for node in list(graph.node):
        for k, name in enumerate(node.input):
            if name in renamed:
                node.input[k] = renamed[name]
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or node.output[0] in outputs:
            continue
        key = (node.op_type, node.input[0],
               tuple(consts.get(n, n) for n in node.input[1:]),
               tuple(sorted((a.name, a.i) for a in node.attribute)))
        if key in seen:
            renamed[node.output[0]] = seen[key]
            graph.node.remove(node)
        else:
            seen[key] = node.output[0]


def _drop_noop_relus(graph) -> None:
    """Remove the model's own ReLUs that read a DequantizeLinear whose values are all >= 0.

    A fused layer's output quantizer already applied the ReLU (uint8, zero point 0), so the
    model's ReLU after it changes nothing, but it stands between DequantizeLinear and the
    next op and hides the pattern ORT fuses (DQ -> Concat -> Q into QLinearConcat). Exact.
    """
    from onnx import numpy_helper

    zero_points = {i.name: numpy_helper.to_array(i) for i in graph.initializer
                   if np.prod(i.dims) <= 1}
    nonnegative = set()
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and len(node.input) == 3:
            zp = zero_points.get(node.input[2])
            if zp is not None and zp.dtype == np.uint8 and int(zp) == 0:
                nonnegative.add(node.output[0])
    outputs = {o.name for o in graph.output}
    renamed = {}
    for node in list(graph.node):
        for k, name in enumerate(node.input):
            if name in renamed:
                node.input[k] = renamed[name]
        if node.op_type == "Relu" and node.input[0] in nonnegative and \
                node.output[0] not in outputs:
            renamed[node.output[0]] = node.input[0]
            graph.node.remove(node)


def _holds(init, baked: np.ndarray) -> bool:
    """Whether the float initializer ``init`` stores exactly ``baked`` (what strip wrote)."""
    from onnx import numpy_helper

    if tuple(init.dims) != baked.shape or init.data_type != 1:
        return False
    if init.raw_data and init.raw_data == np.ascontiguousarray(baked, dtype="<f4").tobytes():
        return True
    # By value: strip writes +0.0 where the pruning mask is (the fake-quant may give -0.0).
    return np.array_equal(numpy_helper.to_array(init), baked)


# Ops that read a weight-only int8 / int4 weight in float and have no kernel taking it as
# integers: the weight is stored as Cast(integers) * scale, which ONNX Runtime folds into a
# float initializer at session start (constant folding), so the op runs its prepacked float
# kernel and a BatchNorm after it folds in too. Read through DequantizeLinear, the same conv
# ran at 0.57x the speed of fp32 (ORT keeps DequantizeLinear for its QDQ fusions and
# dequantizes the weight on every run). Linear layers keep DequantizeLinear: ORT fuses it with
# MatMul into its int8 / int4 MatMulNBits kernel.
_FLOAT_ONLY_OPS = ("Conv", "ConvTranspose")


def _rewrite_conv_weight(graph, name: str, q: np.ndarray, scale: np.ndarray, bits: int) -> bool:
    """Store the weight ``name`` of convolutions as ``Mul(Cast(int8/int4 codes), scale)``.
    False (graph untouched) if some reader of it is not a convolution's weight input."""
    users = _consumers(graph, name)
    if not users or any(u.op_type not in _FLOAT_ONLY_OPS or list(u.input).index(name) != 1
                        for u in users) or scale.ndim > 1:
        return False
    from onnx import TensorProto, helper, numpy_helper

    qname, sname = f"{name}_quantized", f"{name}_scale"
    graph.initializer.append(int_initializer(qname, q, bits))
    # Per output channel (axis 0 of the torch layout) or one scale for the tensor.
    shaped = scale.reshape((-1,) + (1,) * (q.ndim - 1)) if scale.ndim == 1 else scale
    graph.initializer.append(numpy_helper.from_array(
        np.ascontiguousarray(shaped, dtype=np.float32), sname))
    graph.node.insert(0, helper.make_node("Mul", [f"{name}_float", sname], [name],
                                          name=f"{name}_scale_mul"))
    graph.node.insert(0, helper.make_node("Cast", [qname], [f"{name}_float"],
                                          to=TensorProto.FLOAT, name=f"{name}_cast"))
    return True


def _find(inits: dict, name: str, baked: np.ndarray):
    """The initializer holding weight ``name``: by name, else by value (the exporter may store
    a Linear weight pre-transposed under a generated name). Returns ``(init, transposed)``."""
    from onnx import numpy_helper

    if name in inits:
        return inits[name], False
    if baked.ndim != 2:
        return None, False
    for init in inits.values():
        if (tuple(init.dims) == baked.shape[::-1] and init.data_type == 1
                and np.array_equal(numpy_helper.to_array(init), baked.T)):
            return init, True
    return None, False


def _dynamic_stages(model: nn.Module) -> set[int]:
    """``id`` of every parametrization read by a module with a dynamic activation quantizer
    (one pass; a tied weight's single fake-quant counts if any of its readers is dynamic)."""
    return {id(q) for m in model.modules()
            if isinstance(m._modules.get(INPUT), DynamicQuantizer)
            for plist in getattr(getattr(m, "parametrizations", None), "values", list)()
            for q in plist}


def _rewrite_tied_table(graph, name: str, q: np.ndarray, scale: np.ndarray, info: dict) -> bool:
    """An embedding table also read, transposed, by a tied LM head's MatMul: MatMulInteger
    on the int8 table (stored once, transposed) for the MatMuls, and row lookups of that
    same initializer for the Gathers.

    Without this the table stays behind one DequantizeLinear that ORT runs on every call, and
    the exporter's Transpose of the whole table after it: on GPT-2 (50257 x 768) that made
    dynamic int8 slower than fp32 at batch 1. False (graph untouched) unless every reader is
    such a Gather or a Transpose feeding only MatMuls.
    """
    users = _consumers(graph, name)
    gathers = [u for u in users if u.op_type == "Gather"]
    heads = [u for u in users if u.op_type == "Transpose"]
    if not gathers or not heads or len(gathers) + len(heads) != len(users):
        return False
    if not _gathers_ok(gathers, name, scale, info) or not all(
            _perm(t) == [1, 0] and all(u.op_type == "MatMul" and u.input[1] == t.output[0]
                                      for u in _consumers(graph, t.output[0]))
            for t in heads):
        return False
    if not _rewrite_dynamic(graph, name, q, scale, False, users=heads):
        return False
    _gather_columns(graph, name, f"{name}_quantized_t", scale, gathers)
    return True


def _gather_columns(graph, name: str, table_t: str, scale: np.ndarray, users: list) -> None:
    """Row lookups of ``name`` read from the int8 initializer ``table_t`` that holds the
    table transposed (``[dim, rows]``, the head's MatMulInteger operand), so the table is
    stored once: ``ids`` flattened, ``Gather(axis=1)``, ``Transpose``, ``Cast * scale`` of
    those rows, reshaped to ``ids.shape + [dim]``."""
    from onnx import TensorProto, helper, numpy_helper

    sname, flat_shape = f"{name}_row_scale", f"{name}_flat_shape"
    graph.initializer.append(numpy_helper.from_array(
        np.ascontiguousarray(scale.reshape(-1, 1).astype(np.float32)), sname))
    graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), flat_shape))
    dim = f"{name}_dim"
    graph.initializer.append(numpy_helper.from_array(
        np.array([int(_initializer_dims(graph, table_t)[0])], np.int64), dim))
    for k, node in enumerate(users):
        pos = list(graph.node).index(node)
        ids, out, p = node.input[1], node.output[0], f"{name}_lookup{k}"
        new = [
            helper.make_node("Reshape", [ids, flat_shape], [f"{p}_ids"]),
            helper.make_node("Gather", [table_t, f"{p}_ids"], [f"{p}_qt"], axis=1),
            helper.make_node("Transpose", [f"{p}_qt"], [f"{p}_q"], perm=[1, 0]),
            helper.make_node("Cast", [f"{p}_q"], [f"{p}_f"], to=TensorProto.FLOAT),
            helper.make_node("Gather", [sname, f"{p}_ids"], [f"{p}_s"], axis=0),
            helper.make_node("Mul", [f"{p}_f", f"{p}_s"], [f"{p}_rows"]),
            helper.make_node("Shape", [ids], [f"{p}_ids_shape"]),
            helper.make_node("Concat", [f"{p}_ids_shape", dim], [f"{p}_shape"], axis=0),
            helper.make_node("Reshape", [f"{p}_rows", f"{p}_shape"], [out]),
        ]
        graph.node.remove(node)
        for j, n in enumerate(new):
            n.name = f"{p}_{n.op_type}_{j}"
            graph.node.insert(pos + j, n)


def _initializer_dims(graph, name: str) -> list:
    return next(list(i.dims) for i in graph.initializer if i.name == name)


def _gathers_ok(users: list, name: str, scale: np.ndarray, info: dict) -> bool:
    return bool(users) and scale.ndim == 1 and info["group_size"] is None and not any(
        u.op_type != "Gather" or u.input[0] != name or u.input[1] == name
        or _attr(u, "axis", 0) != 0 for u in users)


def _rewrite_gather(graph, name: str, q: np.ndarray, scale: np.ndarray, info: dict) -> bool:
    """Look up int8 rows, then scale only those: ``Gather(q, ids) -> Cast -> Mul(Gather(scale,
    ids))`` for a per-row quantized table read only by row Gathers (an Embedding).

    Why: ``DequantizeLinear(table) -> Gather`` is not folded by ORT, so it dequantizes the
    whole table on every run (MiniLM's 30522 x 384 word table: ~12M values per call, which
    halved the batch-1 speed-up). False (graph untouched) if some use is not such a Gather.
    """
    users = _consumers(graph, name)
    if not _gathers_ok(users, name, scale, info):
        return False
    from onnx import TensorProto, helper, numpy_helper

    qname, sname = f"{name}_quantized", f"{name}_row_scale"
    graph.initializer.append(int_initializer(qname, q, 8))
    graph.initializer.append(numpy_helper.from_array(
        np.ascontiguousarray(scale.reshape(-1, 1).astype(np.float32)), sname))
    for k, node in enumerate(users):
        pos = list(graph.node).index(node)
        ids, out, p = node.input[1], node.output[0], f"{name}_lookup{k}"
        new = [
            helper.make_node("Gather", [qname, ids], [f"{p}_q"], axis=0),
            helper.make_node("Cast", [f"{p}_q"], [f"{p}_f"], to=TensorProto.FLOAT),
            helper.make_node("Gather", [sname, ids], [f"{p}_s"], axis=0),
            helper.make_node("Mul", [f"{p}_f", f"{p}_s"], [out]),
        ]
        graph.node.remove(node)
        for j, n in enumerate(new):
            n.name = f"{p}_{n.op_type}_{j}"
            graph.node.insert(pos + j, n)
    return True


def _consumers(graph, tensor: str) -> list:
    return [n for n in graph.node if tensor in n.input]


def _attr(node, key, default):
    for a in node.attribute:
        if a.name == key:
            return a.f if a.type == a.FLOAT else a.i
    return default


def _rewrite_dynamic(graph, name: str, q: np.ndarray, scale: np.ndarray,
                     transposed: bool, users: list | None = None) -> bool:
    """Turn every matmul on weight ``name`` into DynamicQuantizeLinear -> MatMulInteger ->
    Cast -> Mul(scales). ``q`` is the torch layout [out, in]; the initializer is [in, out] if
    ``transposed``. False (graph untouched) if some use is not a matmul on it. ``users``:
    rewrite only these readers (the caller handles the others)."""
    plans = []
    for node in _consumers(graph, name) if users is None else users:
        args = list(node.input)
        plain = (_attr(node, "transA", 0) == 0 and _attr(node, "alpha", 1.0) == 1.0
                 and _attr(node, "beta", 1.0) == 1.0)
        if node.op_type == "Gemm" and args.index(name) == 1 and plain and (
            _attr(node, "transB", 0) == (0 if transposed else 1)
        ):
            plans.append((node, args[0], args[2] if len(args) > 2 else None, node.output[0],
                          [node]))
        elif node.op_type == "MatMul" and transposed and args.index(name) == 1:
            plans.append((node, args[0], None, node.output[0], [node]))
        elif node.op_type == "Transpose" and not transposed and _perm(node) == [1, 0]:
            users = _consumers(graph, node.output[0])
            if not users or any(u.op_type != "MatMul" or u.input[1] != node.output[0]
                                for u in users):
                return False
            plans.extend((u, u.input[0], None, u.output[0], [u]) for u in users)
            plans.append((node, None, None, None, [node]))
        else:
            return False
    if not plans or scale.ndim > 1:
        return False
    from onnx import TensorProto, helper, numpy_helper

    b = f"{name}_quantized_t"
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(q.T).astype(np.int8), b))
    graph.initializer.append(numpy_helper.from_array(scale.astype(np.float32), f"{name}_scale"))
    for k, (node, a, bias, out, removed) in enumerate(plans):
        pos = list(graph.node).index(node)
        for r in removed:
            graph.node.remove(r)
        if a is None:
            continue
        p = f"{name}_dq{k}"
        new = [
            helper.make_node("DynamicQuantizeLinear", [a], [f"{p}_a", f"{p}_as", f"{p}_az"]),
            helper.make_node("MatMulInteger", [f"{p}_a", b, f"{p}_az"], [f"{p}_i32"]),
            helper.make_node("Cast", [f"{p}_i32"], [f"{p}_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{p}_as", f"{name}_scale"], [f"{p}_s"]),
            helper.make_node("Mul", [f"{p}_f", f"{p}_s"], [out if bias is None else f"{p}_y"]),
        ]
        if bias is not None:
            new.append(helper.make_node("Add", [f"{p}_y", bias], [out]))
        for j, n in enumerate(new):
            n.name = f"{p}_{n.op_type}_{j}"
            graph.node.insert(pos + j, n)
    return True


def _perm(node) -> list:
    for a in node.attribute:
        if a.name == "perm":
            return list(a.ints)
    return []
