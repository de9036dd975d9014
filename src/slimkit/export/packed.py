"""``sk.export_packed`` / ``sk.load_packed``: a model's weights near the entropy bound.

A pruned, clustered and int8-quantized model has few distinct values per weight tensor and
mostly zeros. The packed file stores every tensor of the stripped model as

- a zero mask, entropy coded with one Bernoulli probability per row (or per column) of the
  weight viewed as a matrix: pruning leaves rows with different sparsity, and a per-row model
  codes that below the per-tensor entropy;
- the non-zero values as index codes into a codebook of the tensor's distinct values, entropy
  coded with a categorical model whose symbol frequencies are stored in the file;
- quantized weights as their int8 (int4) integers plus the float scales, so the codes are
  those of the int8 artifact, not the per-channel floats;
- everything else (biases, dense fp32 weights, buffers) raw, unless coding makes it smaller.

The entropy coder is ``constriction``'s range coder (extra ``slimkit[packed]``). The file is a
fixed 16-byte prefix (magic, format version, header length, CRC32 of the rest), the payload
(tensor after tensor, written as it is coded) and a zlib-compressed JSON header at the end
(records, tensor names, shapes, dtypes, segment lengths). Values are compared by bit pattern, so -0.0 and NaN payloads round-trip exactly.

Loading replays the records that still matter after ``sk.strip`` (structural ones, which
change shapes, and quantization, whose activation ranges and export hooks make the int8
ONNX) on a fresh model and fills it with the stored tensors: the stripped model's state_dict
is bit-identical to the original's, and ``sk.export_onnx`` of the loaded model writes the same
artifact. Pruning masks and cluster assignments are baked into the values.

Example:
    >>> sk.export_packed(model, "model.skpack")          # pruned + clustered + QAT model
    >>> fresh = sk.load_packed("model.skpack", model=DigitsCNN())
    >>> sk.export_onnx(fresh, "int8.onnx", example_inputs=x)
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from slimkit.core.io import atomic_path
from slimkit.core.parametrize import get_module, input_of, slim_parametrizations
from slimkit.core.records import records
from slimkit.core.registry import get_technique, replay_record
from slimkit.core.selection import module_type
from slimkit.export.pipeline import deployable, techniques_of
from slimkit.storage.intcodes import IntCodes

MAGIC = b"SKPACK"
FORMAT = "slimkit.packed"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<6sHII")  # magic, version, header length, crc32(header + payload)
# Above this many distinct values a codebook costs more than it saves on any real tensor.
MAX_CODEBOOK = 1 << 16
_WEIGHT_LEVELS = 65535  # symbol frequencies are stored as uint16, scaled to this maximum
_P_LEVELS = 255  # per-row zero-mask probabilities are stored as uint8


class PackedFormatError(ValueError):
    """The file is not a packed slimkit model, is corrupt, or is of a newer format."""


def _coder():
    try:
        import constriction
    except ImportError as e:  # an optional extra
        raise ImportError(
            "sk.export_packed / sk.load_packed need the entropy coder 'constriction': "
            "pip install 'slimkit[packed]'"
        ) from e
    return constriction.stream


# ---- tensors as bit patterns -----------------------------------------------------------

_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise PackedFormatError(f"unknown dtype {name!r} in the packed file")
    return dtype


def _bits(t: torch.Tensor) -> np.ndarray:
    """The tensor's elements as unsigned integers of the same width (exact for any dtype)."""
    t = t.detach().cpu().contiguous()
    raw = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else np.zeros(0, np.uint8)
    return raw.view(_UINT[t.element_size()])


def _from_bits(bits: np.ndarray, dtype: torch.dtype, shape) -> torch.Tensor:
    raw = torch.from_numpy(np.ascontiguousarray(bits).view(np.uint8).copy())
    return raw.view(dtype).reshape(shape)


# ---- one symbol stream: zero mask + codebook indices --------------------------------------

def _entropy_bits(counts: np.ndarray) -> float:
    counts = counts[counts > 0].astype(np.float64)
    n = counts.sum()
    return float(-(counts * np.log2(counts / n)).sum()) if n else 0.0


def _bernoulli_bits(nnz: np.ndarray, n: int) -> float:
    p = nnz / n
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return float(np.nan_to_num(h).sum() * n)


def _mask_layouts(values: np.ndarray, shape: tuple) -> list[tuple[int, float]]:
    """Candidate zero-mask models ``(axis, estimated bytes)``: one probability per row
    (axis 0) or per column (axis 1) of the ``(shape[0], -1)`` matrix, or one for all (-1)."""
    nz = values != 0
    out = [(-1, _bernoulli_bits(np.array([nz.sum()]), nz.size) / 8 + 1)]
    if len(shape) >= 2 and nz.size:
        m = nz.reshape(shape[0], -1)
        out.append((0, _bernoulli_bits(m.sum(1), m.shape[1]) / 8 + m.shape[0]))
        out.append((1, _bernoulli_bits(m.sum(0), m.shape[0]) / 8 + m.shape[1]))
    return out


def _levels(counts: np.ndarray, top: int) -> np.ndarray:
    """Counts scaled to integers in [1, top] (every present symbol keeps a probability)."""
    scaled = np.round(counts.astype(np.float64) * (top / counts.max()))
    return np.clip(scaled, 1, top)


def _plan(values: np.ndarray, shape: tuple, itemsize: int):
    """How to code ``values`` (uint bit patterns): None (raw is smaller) or the plan."""
    n = values.size
    raw = n * itemsize
    if n < 16:
        return None
    codebook, counts = np.unique(values, return_counts=True)
    if codebook.size > MAX_CODEBOOK:
        return None
    table = codebook.size * (itemsize + 2)
    # Every value, zero included, by the codebook:
    best = (_entropy_bits(counts) / 8 + table, None, "coded")
    if codebook[0] == 0 and codebook.size > 1:
        nnz = n - int(counts[0])
        # Non-zeros by the codebook, or raw when they are (nearly) all distinct (a pruned
        # fp32 weight): a codebook of distinct floats costs more than the floats.
        coded = _entropy_bits(counts[1:]) / 8 + (codebook.size - 1) * (itemsize + 2)
        for axis, mask_bytes in _mask_layouts(values, shape):
            for cost, kind in ((coded, "coded"), (nnz * itemsize, "raw")):
                if mask_bytes + cost < best[0]:
                    best = (mask_bytes + cost, axis, kind)
    size = best[0] + 64  # stream tail and header entry, roughly
    return None if size >= raw else {"mask_axis": best[1], "values": best[2]}


def _encode_symbols(values: np.ndarray, shape: tuple, plan: dict, coder) -> tuple[dict, list]:
    """Range-code ``values``; returns the header entry and its payload segments."""
    model = coder.model
    enc = coder.queue.RangeEncoder()
    axis = plan["mask_axis"]
    meta, segments = {"mask_axis": axis, "values": plan["values"]}, []
    if axis is not None:
        nz = values != 0
        probs, p_levels = _mask_probabilities(nz, shape, axis)
        segments.append(p_levels.tobytes())
        enc.encode(nz.astype(np.int32), model.Bernoulli(perfect=False), probs)
        values = values[nz]
    if plan["values"] == "raw":
        segments.append(values.tobytes())
        segments.append(enc.get_compressed().tobytes())
        return meta, segments
    codebook, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    levels = _levels(counts, _WEIGHT_LEVELS).astype(np.uint16)
    segments.append(codebook.tobytes())
    segments.append(levels.tobytes())
    meta["symbols"] = int(codebook.size)
    if codebook.size > 1:
        enc.encode(inverse.astype(np.int32).reshape(-1),
                   model.Categorical(levels.astype(np.float64), perfect=False))
    segments.append(enc.get_compressed().tobytes())
    return meta, segments


def _mask_probabilities(nz: np.ndarray, shape: tuple, axis: int):
    """Per-element probability of "non-zero" and the stored uint8 levels it came from."""
    if axis == -1:
        groups = nz.reshape(1, -1)
    else:
        groups = nz.reshape(shape[0], -1)
        if axis == 1:
            groups = groups.T
    share = groups.mean(1)
    p_levels = np.round(share * _P_LEVELS).astype(np.uint8)
    return _expand_probabilities(p_levels, shape, axis, nz.size), p_levels


def _expand_probabilities(p_levels: np.ndarray, shape: tuple, axis: int, n: int) -> np.ndarray:
    # A level of 0 or 255 still leaves the other outcome codable (constriction keeps a
    # minimum probability), so a rounding to "never" costs bits, not correctness.
    p = p_levels.astype(np.float64) / _P_LEVELS
    if axis == -1:
        return np.full(n, p[0])
    rows = shape[0]
    cols = n // rows
    full = np.repeat(p, cols) if axis == 0 else np.tile(p, rows)
    return full


def _decode_symbols(meta: dict, segments: list, n: int, shape: tuple, uint, coder) -> np.ndarray:
    model = coder.model
    axis = meta["mask_axis"]
    k = 0
    if axis is not None:
        p_levels = np.frombuffer(segments[k], dtype=np.uint8)
        k += 1
    if meta.get("values") == "raw":
        nonzero = np.frombuffer(segments[k], dtype=uint)
        dec = coder.queue.RangeDecoder(np.frombuffer(segments[k + 1], dtype=np.uint32).copy())
        nz = dec.decode(model.Bernoulli(perfect=False),
                        _expand_probabilities(p_levels, shape, axis, n)).astype(bool)
        if int(nz.sum()) != nonzero.size:
            raise PackedFormatError("the zero mask does not match the stored non-zero values")
        out = np.zeros(n, dtype=uint)
        out[nz] = nonzero
        return out
    codebook = np.frombuffer(segments[k], dtype=uint)
    levels = np.frombuffer(segments[k + 1], dtype=np.uint16)
    stream = np.frombuffer(segments[k + 2], dtype=np.uint32).copy()
    if codebook.size != meta["symbols"] or levels.size != meta["symbols"]:
        raise PackedFormatError("codebook length does not match its header entry")
    dec = coder.queue.RangeDecoder(stream)
    if axis is not None:
        probs = _expand_probabilities(p_levels, shape, axis, n)
        nz = dec.decode(model.Bernoulli(perfect=False), probs).astype(bool)
        count = int(nz.sum())
    else:
        count = n
    if codebook.size > 1:
        idx = dec.decode(model.Categorical(levels.astype(np.float64), perfect=False), count)
        if idx.size and (idx.min() < 0 or idx.max() >= codebook.size):
            raise PackedFormatError("a decoded index is outside its codebook")
        vals = codebook[idx]
    else:
        vals = np.full(count, codebook[0] if codebook.size else 0, dtype=uint)
    if axis is None:
        return vals
    out = np.zeros(n, dtype=uint)
    out[nz] = vals
    return out


# ---- export ------------------------------------------------------------------------------

def _quantized_weights(model: nn.Module) -> dict:
    """Integer codes of every weight a technique stores as codes, by stripped name.

    The packed file stores such a weight as these (the codes of the int8 artifact): the
    per-channel floats ``q * scale`` have as many distinct values as (code, channel) pairs.
    A small negative weight rounds to -0.0, which the integer 0 cannot say: those positions
    are kept as a mask (usually empty), so the baked weight comes back bit for bit.
    """
    out = {}
    for tech in techniques_of(model):
        for key, codes in tech.stored_weights(model).items():
            out[key] = {"q": codes.q.to(torch.int8), "scale": codes.scale.float(),
                        "group_size": codes.group_size}
    return out


def _rebuild(info: dict, dtype: torch.dtype) -> torch.Tensor:
    """``q * scale`` as the fake-quant computes it (float32 multiply), -0.0 restored."""
    w = IntCodes(info["q"], info["scale"], 8, info["group_size"]).decode(torch.float32)
    neg = info.get("negative_zeros")
    if neg is not None and bool(neg.any()):
        w[neg] = -0.0
    return w.to(dtype)


def _as_bits_tensor(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32 if t.element_size() == 4 else torch.uint8)


def _replayed(recs: list) -> list:
    """The records ``load_packed`` replays: those whose state outlives ``sk.strip``."""
    return [rec for rec in recs if get_technique(rec["technique"]).survives_strip(rec)]


def export_packed(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model`` (prepared or plain) to ``path`` in the packed format, atomically.

    The model is deep-copied and stripped; the caller's model is untouched. Returns ``path``.
    Read it back with :func:`load_packed` into a fresh instance of the same class.

    Example:
        >>> sk.export_packed(model, "digits.skpack")
        >>> Path("digits.skpack").stat().st_size        # ~30 KB for PCQAT digits
    """
    from slimkit import __version__

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    path = Path(path)
    coder = _coder()
    recs = records(model)
    quant = _quantized_weights(model)
    state = deployable(model, hooks=False).state_dict()

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        # Tensors are coded and written one at a time (a large model is never held twice in
        # memory); the prefix is written last, once the header length and checksum are known.
        f.write(bytes(_PREFIX.size))
        entries, crc = _write_tensors(f, state, quant, coder)
        header = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "slimkit_version": __version__,
            "model": module_type(model).__name__,
            "records": _replayed(recs),
            "tensors": entries,
        }
        head = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
        f.write(head)
        f.seek(0)
        f.write(_PREFIX.pack(MAGIC, FORMAT_VERSION, len(head), zlib.crc32(head, crc)))
    return path


def _write_tensors(f, state: dict, quant: dict, coder) -> tuple[list, int]:
    """Code every tensor of ``state`` into ``f``; returns the header entries and the CRC32."""
    entries, seen, crc = [], {}, 0
    for name, tensor in state.items():
        entry = {"name": name, "dtype": _dtype_name(tensor.dtype), "shape": list(tensor.shape)}
        key = _storage_key(tensor)
        if key in seen:  # tied weights: one copy, the other names point at it
            entry["kind"] = "alias"
            entry["of"] = seen[key]
            entries.append(entry)
            continue
        seen[key] = name
        info = quant.get(name)
        if info is not None:
            # A weight that rounded to -0.0 says so in a mask; the codes alone give +0.0.
            info = {**info, "negative_zeros": (tensor == 0) & torch.signbit(tensor)}
        if info is not None and torch.equal(_as_bits_tensor(_rebuild(info, tensor.dtype)),
                                            _as_bits_tensor(tensor)):
            entry["kind"] = "quantized"
            entry["group_size"] = info["group_size"]
            parts = [("codes", info["q"]), ("scale", info["scale"])]
            if bool(info["negative_zeros"].any()):
                parts.append(("negative_zeros", info["negative_zeros"]))
        else:
            entry["kind"] = "plain"
            parts = [("values", tensor)]
        entry["parts"] = []
        for label, t in parts:
            part, segments = _encode_tensor(t, coder)
            part["label"] = label
            part["segments"] = [len(s) for s in segments]
            entry["parts"].append(part)
            for segment in segments:
                f.write(segment)
                crc = zlib.crc32(segment, crc)
        entries.append(entry)
    return entries, crc


def _storage_key(t: torch.Tensor) -> tuple:
    if t.numel() == 0:
        return (id(t),)
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
            tuple(t.stride()), t.dtype)


def _encode_tensor(t: torch.Tensor, coder) -> tuple[dict, list[bytes]]:
    """One tensor -> header part + payload segments (raw bytes, or coded symbols)."""
    bits = _bits(t)
    shape = tuple(t.shape)
    plan = _plan(bits, shape, t.element_size())
    part = {"dtype": _dtype_name(t.dtype), "shape": list(shape)}
    if plan is None:
        part["coding"] = "raw"
        return part, [bits.tobytes()]
    meta, segments = _encode_symbols(bits, shape, plan, coder)
    part["coding"] = "range"
    part.update(meta)
    return part, segments


# ---- load --------------------------------------------------------------------------------

def read_packed(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """The header and the stripped state_dict stored in a packed file (no model needed).

    Example:
        >>> header, state = read_packed("digits.skpack")
        >>> state["fc1.weight"].shape
        torch.Size([128, 1024])
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist; expected a file written by "
                                "sk.export_packed")
    data = path.read_bytes()
    where = f"{str(path)!r}"
    if len(data) < _PREFIX.size or data[:len(MAGIC)] != MAGIC:
        raise PackedFormatError(f"{where} is not a packed slimkit model (written by "
                                "sk.export_packed): wrong magic bytes")
    magic, version, head_len, crc = _PREFIX.unpack_from(data)
    if version > FORMAT_VERSION:
        raise PackedFormatError(f"{where} has packed format version {version}, newer than "
                                f"this slimkit reads ({FORMAT_VERSION}); upgrade slimkit")
    rest = memoryview(data)[_PREFIX.size:]
    if len(rest) < head_len or zlib.crc32(rest) != crc:
        raise PackedFormatError(f"{where} is corrupt (checksum mismatch or truncated); "
                                "write it again with sk.export_packed")
    try:
        header = json.loads(zlib.decompress(rest[len(rest) - head_len:]))
    except (zlib.error, ValueError) as e:
        raise PackedFormatError(f"{where} has an unreadable header: {e}") from e
    if header.get("format") != FORMAT:
        raise PackedFormatError(f"{where} is not a packed slimkit model (format "
                                f"{header.get('format')!r})")
    coder = _coder()
    body = rest[:len(rest) - head_len]
    offset, state = 0, {}
    for entry in header["tensors"]:
        if entry["kind"] == "alias":
            state[entry["name"]] = state[entry["of"]]
            continue
        parts = {}
        for part in entry["parts"]:
            segments = []
            for length in part["segments"]:
                if offset + length > len(body):
                    raise PackedFormatError(f"{where} is truncated in tensor {entry['name']!r}")
                segments.append(bytes(body[offset:offset + length]))
                offset += length
            parts[part["label"]] = _decode_tensor(part, segments, coder, entry["name"])
        state[entry["name"]] = _assemble(entry, parts)
    if offset != len(body):
        raise PackedFormatError(f"{where} has {len(body) - offset} unexpected trailing bytes")
    return header, state


def _decode_tensor(part: dict, segments: list, coder, name: str) -> torch.Tensor:
    dtype = _torch_dtype(part["dtype"])
    shape = tuple(part["shape"])
    n = math.prod(shape)
    uint = _UINT[torch.empty((), dtype=dtype).element_size()]
    if part["coding"] == "raw":
        bits = np.frombuffer(segments[0], dtype=uint)
        if bits.size != n:
            raise PackedFormatError(f"tensor {name!r}: {bits.size} stored values for shape "
                                    f"{shape}")
    else:
        bits = _decode_symbols(part, segments, n, shape, uint, coder)
    return _from_bits(bits, dtype, shape)


def _assemble(entry: dict, parts: dict) -> torch.Tensor:
    if entry["kind"] == "plain":
        return parts["values"]
    info = {"q": parts["codes"], "scale": parts["scale"], "group_size": entry["group_size"],
            "negative_zeros": parts.get("negative_zeros")}
    # The same float32 product the fake-quant computes: bit-identical to the baked weight.
    return _rebuild(info, _torch_dtype(entry["dtype"]))


def load_packed(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Fill ``model`` (a fresh, unprepared instance of the packed model's class) from ``path``.

    Structural and quantization records are replayed first (so a quantized model exports to
    the same int8 ONNX), then every stored tensor is loaded. Returns ``model``.

    Raises:
        PackedFormatError: not a packed file, corrupt, or a newer format.
        ValueError: the model does not match (the message names the tensor and the shapes).

    Example:
        >>> model = sk.load_packed("digits.skpack", model=DigitsCNN())
        >>> sk.export_onnx(model, "digits-int8.onnx", example_inputs=x)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if records(model):
        raise ValueError(
            "load_packed needs a fresh model: this one already has techniques applied "
            f"({', '.join(r['technique'] for r in records(model))})"
        )
    header, state = read_packed(path)
    for rec in header["records"]:
        replay_record(model, rec)
    targets = _stripped_names(model)
    own = model.state_dict()
    missing = [k for k in targets if k not in state]
    if missing:
        raise ValueError(
            f"{str(path)!r} does not fit {module_type(model).__name__} "
            f"(packed from {header.get('model')}): it has no tensor {missing[0]!r}"
            + (f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else "")
        )
    for name, tensor in state.items():
        if name not in targets:
            raise ValueError(
                f"{str(path)!r} does not fit {module_type(model).__name__} (packed from "
                f"{header.get('model')}): the model has no tensor {name!r}"
            )
        have = own[targets[name]]
        if tuple(have.shape) != tuple(tensor.shape) or have.dtype != tensor.dtype:
            raise ValueError(
                f"tensor {name!r}: the packed file has shape {tuple(tensor.shape)} "
                f"{_dtype_name(tensor.dtype)}, the model {tuple(have.shape)} "
                f"{_dtype_name(have.dtype)} ({module_type(model).__name__})"
            )
    with torch.no_grad():
        for name, tensor in state.items():
            own[targets[name]].copy_(tensor)
    _check_baked(model, state)
    return model


def _stripped_names(model: nn.Module) -> dict[str, str]:
    """Map each stripped state_dict name to the model's own name (a parametrized weight's
    ``original``); parametrization buffers (step counts) are not part of a stripped model."""
    out = {}
    for name in model.state_dict():
        parts = name.split(".")
        if "parametrizations" not in parts:
            out[name] = name
            continue
        i = parts.index("parametrizations")
        if parts[i + 2:] == ["original"]:
            out[".".join(parts[:i] + [parts[i + 1]])] = name
    return out


def _check_baked(model: nn.Module, state: dict) -> None:
    """Every replayed parametrization must reproduce its stored weight bit for bit."""
    for mname, tname, index, p in slim_parametrizations(model):
        module = get_module(model, mname)
        plist = module.parametrizations[tname]
        if index != len(plist) - 1:
            continue
        key = f"{mname}.{tname}" if mname else tname
        with torch.no_grad():
            out = p(input_of(module, tname, index))
        if not torch.equal(_as_bits_tensor(out), _as_bits_tensor(state[key])):
            raise ValueError(
                f"tensor {key!r}: the replayed {type(p).__name__} does not reproduce the "
                "stored values exactly; the packed file and this slimkit disagree"
            )
