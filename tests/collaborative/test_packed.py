"""The packed format: any model round-trips bit-exactly; bad files and models fail clearly."""

from __future__ import annotations

import copy
import struct

import numpy as np
import pytest
import torch
import torch.nn as nn

import slimkit as sk
from slimkit.examples import DigitsCNN
from slimkit.export import PackedFormatError, read_packed

from ..conftest import TiedLM


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    want = sk.strip(copy.deepcopy(a)).state_dict()
    got = sk.strip(copy.deepcopy(b)).state_dict()
    assert set(got) == set(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name
        assert got[name].dtype == want[name].dtype, name


def test_dense_fp32_model_round_trips(seeded, tmp_path):
    model = DigitsCNN()
    path = sk.export_packed(model, tmp_path / "dense.skpack")
    header, _ = read_packed(path)
    codings = {p["coding"] for t in header["tensors"] for p in t["parts"]}
    assert codings == {"raw"}  # all-distinct floats: a codebook would only add bytes
    raw = sum(p.numel() * 4 for p in model.parameters())
    assert raw < path.stat().st_size < raw + 1024  # raw floats + a small header
    assert_same_state(model, sk.load_packed(path, model=DigitsCNN()))


def test_pruned_clustered_fp32_model_is_coded(stages, tmp_path):
    path = sk.export_packed(stages.clustered, tmp_path / "pc.skpack")
    loaded = sk.load_packed(path, model=DigitsCNN())
    assert not sk.records(loaded)  # masks and clusters are baked into the values
    assert_same_state(stages.clustered, loaded)
    bound = sk.report(stages.clustered).entropy_bound_bytes
    assert path.stat().st_size / bound <= 1.1


def test_signed_zeros_nan_and_odd_dtypes_round_trip(tmp_path):
    model = nn.Module()
    w = torch.zeros(8, 64)
    w[0, :4] = torch.tensor([-0.0, float("nan"), float("inf"), 1.5])
    w[1::2] = 0.25
    model.lin = nn.Linear(64, 8)
    with torch.no_grad():
        model.lin.weight.copy_(w)
    model.register_buffer("h16", torch.arange(40, dtype=torch.float16).reshape(5, 8) % 3)
    model.register_buffer("bf16", torch.ones(4, 4, dtype=torch.bfloat16))
    model.register_buffer("count", torch.tensor(7, dtype=torch.int64))
    model.register_buffer("flags", torch.tensor([True, False, True]))
    path = sk.export_packed(model, tmp_path / "odd.skpack")
    fresh = nn.Module()
    fresh.lin = nn.Linear(64, 8)
    fresh.register_buffer("h16", torch.zeros(5, 8, dtype=torch.float16))
    fresh.register_buffer("bf16", torch.zeros(4, 4, dtype=torch.bfloat16))
    fresh.register_buffer("count", torch.tensor(0, dtype=torch.int64))
    fresh.register_buffer("flags", torch.zeros(3, dtype=torch.bool))
    sk.load_packed(path, model=fresh)
    bits = fresh.lin.weight.detach().view(torch.int32)
    assert torch.equal(bits, model.lin.weight.detach().view(torch.int32))  # -0.0 and NaN too
    for name in ("h16", "bf16", "count", "flags"):
        assert torch.equal(getattr(fresh, name), getattr(model, name)), name


def test_tied_weights_are_stored_once_and_stay_tied(seeded, tmp_path):
    model = TiedLM()
    path = sk.export_packed(model, tmp_path / "tied.skpack")
    header, _ = read_packed(path)
    assert [t["kind"] for t in header["tensors"]].count("alias") == 1
    fresh = sk.load_packed(path, model=TiedLM())
    assert fresh.head.weight is fresh.embed.weight
    assert_same_state(model, fresh)


def test_wrong_model_names_the_tensor_and_shapes(stages, tmp_path):
    path = sk.export_packed(stages.pcqat, tmp_path / "m.skpack")

    class Wider(DigitsCNN):
        def __init__(self):
            super().__init__()
            self.fc2 = nn.Linear(128, 12)

    with pytest.raises(ValueError, match=r"fc2\.bias.*\(10,\).*\(12,\)"):
        sk.load_packed(path, model=Wider())
    with pytest.raises(ValueError, match="fresh model"):
        sk.load_packed(path, model=copy.deepcopy(stages.pcqat))
    plain = sk.export_packed(DigitsCNN(), tmp_path / "plain.skpack")
    with pytest.raises(ValueError, match="no tensor 'extra.weight'"):
        class More(DigitsCNN):
            def __init__(self):
                super().__init__()
                self.extra = nn.Linear(2, 2)
        sk.load_packed(plain, model=More())


def test_bad_files_fail_clearly(tmp_path):
    path = sk.export_packed(DigitsCNN(), tmp_path / "m.skpack")
    data = bytearray(path.read_bytes())

    corrupt = tmp_path / "corrupt.skpack"
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(flipped))
    with pytest.raises(PackedFormatError, match="corrupt"):
        sk.load_packed(corrupt, model=DigitsCNN())

    truncated = tmp_path / "truncated.skpack"
    truncated.write_bytes(bytes(data[:-100]))
    with pytest.raises(PackedFormatError, match="corrupt"):
        sk.load_packed(truncated, model=DigitsCNN())

    other = tmp_path / "model.onnx"
    other.write_bytes(b"\x08\x07" + bytes(100))
    with pytest.raises(PackedFormatError, match="not a packed slimkit model"):
        sk.load_packed(other, model=DigitsCNN())

    newer = tmp_path / "newer.skpack"
    newer.write_bytes(data[:6] + struct.pack("<H", 99) + data[8:])
    with pytest.raises(PackedFormatError, match="version 99"):
        sk.load_packed(newer, model=DigitsCNN())

    with pytest.raises(FileNotFoundError):
        sk.load_packed(tmp_path / "missing.skpack", model=DigitsCNN())


def test_write_is_atomic(tmp_path, monkeypatch):
    from slimkit.export import packed

    path = tmp_path / "m.skpack"
    path.write_bytes(b"previous")

    def fail(*args, **kwargs):
        raise RuntimeError("coder failed")

    monkeypatch.setattr(packed, "_encode_tensor", fail)
    with pytest.raises(RuntimeError, match="coder failed"):
        sk.export_packed(DigitsCNN(), path)
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["m.skpack"]  # no temporary file left
    with pytest.raises(FileNotFoundError, match="directory"):
        sk.export_packed(DigitsCNN(), tmp_path / "no" / "m.skpack")


def test_codes_are_exact_for_every_layout(tmp_path):
    # Row-wise, column-wise and global zero masks, with and without a codebook.
    rng = np.random.default_rng(0)
    model = nn.Module()
    rows = np.where(rng.random((64, 256)) < np.linspace(0.05, 0.95, 64)[:, None], 0.0,
                    rng.choice([-0.5, 0.25, 1.0], size=(64, 256)))
    cols = rows.T.copy()
    flat = np.where(rng.random((32, 32)) < 0.8, 0.0, rng.choice([1.0, 2.0], size=(32, 32)))
    for name, a in (("rows", rows), ("cols", cols), ("flat", flat)):
        model.register_buffer(name, torch.tensor(a, dtype=torch.float32))
    path = sk.export_packed(model, tmp_path / "layouts.skpack")
    header, state = read_packed(path)
    axes = {t["name"]: t["parts"][0].get("mask_axis") for t in header["tensors"]}
    assert axes["rows"] == 0 and axes["cols"] == 1
    for name in ("rows", "cols", "flat"):
        assert torch.equal(state[name], getattr(model, name)), name


def test_pruned_fp32_stores_mask_and_raw_nonzeros(seeded, tmp_path):
    # 80% zeros, every other value distinct: coded mask + raw floats beats a codebook.
    model = DigitsCNN()
    sk.prune(model, sk.MagnitudePruningConfig(0.8))
    path = sk.export_packed(model, tmp_path / "pruned.skpack")
    header, _ = read_packed(path)
    fc1 = next(t for t in header["tensors"] if t["name"] == "fc1.weight")
    assert fc1["parts"][0]["values"] == "raw" and fc1["parts"][0]["mask_axis"] is not None
    weights = sum(p.numel() for n, p in sk.strip(copy.deepcopy(model)).named_parameters()
                  if n.endswith("weight"))
    # 20% of the floats raw + ~0.72 bits of mask per weight (+ biases, header).
    assert path.stat().st_size < 0.2 * weights * 4 + weights * 0.75 / 8 + 2500
    assert_same_state(model, sk.load_packed(path, model=DigitsCNN()))


def test_qat_negative_zeros_round_trip(seeded, digits, tmp_path):
    # Dense QAT: small negative weights round to -0.0 in the baked float weight.
    model = DigitsCNN()
    sk.quantize(model, sk.QATConfig(), calibration=digits.calibration, progress=False)
    baked = sk.strip(copy.deepcopy(model)).fc1.weight
    assert bool(((baked == 0) & torch.signbit(baked)).any())
    path = sk.export_packed(model, tmp_path / "qat.skpack")
    header, _ = read_packed(path)
    fc1 = next(t for t in header["tensors"] if t["name"] == "fc1.weight")
    assert fc1["kind"] == "quantized"
    assert [p["label"] for p in fc1["parts"]] == ["codes", "scale", "negative_zeros"]
    assert path.stat().st_size < 0.3 * weights_bytes(model)
    assert_same_state(model, sk.load_packed(path, model=DigitsCNN()))


def weights_bytes(model) -> int:
    return sum(p.numel() * 4 for p in model.parameters())
