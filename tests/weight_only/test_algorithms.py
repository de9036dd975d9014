"""The weight-only algorithms on one weight: grid, RTN, HQQ, GPTQ, AWQ (fixed seeds)."""

from __future__ import annotations

import pytest
import torch

from slimkit.techniques.weight_only.awq import awq_candidate, awq_clip, awq_search
from slimkit.techniques.weight_only.gptq import gptq_quantize, layer_error
from slimkit.techniques.weight_only.grid import check_group_size, dequantize, fake_quantize
from slimkit.techniques.weight_only.hqq import hqq_optimize
from slimkit.techniques.weight_only.rtn import rtn

SETTINGS = [(4, 128, True), (4, 32, False), (3, 64, True), (4, None, True), (8, None, True),
            (2, 32, False)]


def correlated(n=2048, d=256, seed=0):
    """Inputs with correlated channels and a few large ones, like a transformer's."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(d) + 2 * torch.randn(d, d, generator=g) / d**0.5
    x = torch.randn(n, d, generator=g) @ mix
    x[:, :6] *= 10
    return x


def weight(out=128, d=256, seed=1):
    return torch.randn(out, d, generator=torch.Generator().manual_seed(seed)) * 0.05


def hessian(x):
    return 2 * x.T.double() @ x.double() / x.shape[0]


@pytest.mark.parametrize("bits,gs,sym", SETTINGS)
def test_rtn_grid(bits, gs, sym):
    w = weight()
    codes, scales, zeros = rtn(w, bits, gs, sym)
    assert codes.dtype == torch.uint8 and codes.shape == w.shape
    assert int(codes.max()) <= 2**bits - 1
    assert scales.shape == zeros.shape == (128, 1 if gs is None else 256 // gs)
    assert torch.equal(zeros, zeros.round())                  # integer zero points
    if sym:
        assert torch.all(zeros == 2 ** (bits - 1))
    w_hat = dequantize(codes, scales, zeros, gs)
    # Round to nearest: every error is at most half a step (the range covers every value).
    step = scales.repeat_interleave(256 if gs is None else gs, 1)
    assert torch.all((w_hat - w).abs() <= step / 2 + 1e-6)


def test_partial_last_group():
    w = weight(d=576 // 4 * 2)          # 288 columns, group 128: groups of 128, 128, 32
    codes, scales, zeros = rtn(w, 4, 128, True)
    assert scales.shape == (128, 3)
    w_hat = dequantize(codes, scales, zeros, 128)
    # The short group has its own scale: its max |w| over its 32 columns.
    torch.testing.assert_close(scales[:, 2], 2 * w[:, 256:].abs().amax(1) / 15)
    assert (w_hat - w).abs().max() < scales.max()
    hq = hqq_optimize(w, 4, 128, False)
    assert hq[0].shape == w.shape and hq[1].shape == (128, 3)


def test_group_size_error_names_layer_and_divisors():
    with pytest.raises(ValueError, match=r"in_features 576 of model.layers.0.mlp.up_proj.*\[32, 64, None\]"):
        check_group_size(576, 128, "model.layers.0.mlp.up_proj")
    check_group_size(576, 128, "x", allow_partial=True)        # allowed explicitly


@pytest.mark.parametrize("bits,gs,sym", SETTINGS)
def test_hqq_not_worse_than_rtn(bits, gs, sym):
    w = weight()
    w[3, 7] = 1.0                       # an outlier weight, which lp (p < 1) fits around
    w_r = dequantize(*rtn(w, bits, gs, sym), gs)
    c, s, z = hqq_optimize(w, bits, gs, sym)
    w_h = dequantize(c, s, z, gs)
    err_r, err_h = float((w - w_r).pow(2).sum()), float((w - w_h).pow(2).sum())
    assert err_h <= err_r * (1 + 1e-6)
    if bits <= 4:                        # HQQ finds a clearly better grid at low bit widths
        assert err_h < 0.97 * err_r, (err_h, err_r)
    if not sym:
        assert not torch.equal(z, z.round())   # HQQ's zero points are floats


@pytest.mark.parametrize("bits,gs,sym", SETTINGS)
def test_gptq_beats_rtn_on_correlated_inputs(bits, gs, sym):
    x, w = correlated(), weight()
    H = hessian(x)
    e_rtn = layer_error(w, dequantize(*rtn(w, bits, gs, sym), gs), H)
    e_gptq = layer_error(w, dequantize(*gptq_quantize(w, H, bits, gs, sym), gs), H)
    # Measured 0.21-0.40x of RTN on these inputs (seeds 0, 1); the test asks for < 0.6x.
    assert e_gptq < 0.6 * e_rtn, (e_gptq, e_rtn)
    # layer_error is ||wX - qX||^2 / n: check it against the inputs themselves.
    q = dequantize(*gptq_quantize(w, H, bits, gs, sym), gs)
    direct = float((x @ (w - q).T).pow(2).sum() / x.shape[0])
    assert abs(direct - e_gptq) <= 1e-3 * direct


def test_gptq_act_order_and_damp():
    x, w = correlated(), weight()
    H = hessian(x)
    e_rtn = layer_error(w, dequantize(*rtn(w, 4, 64, True), 64), H)
    codes, s, z = gptq_quantize(w, H, 4, 64, True, act_order=True, block=32)
    assert codes.shape == w.shape
    e_act = layer_error(w, dequantize(codes, s, z, 64), H)
    assert e_act < 0.6 * e_rtn
    # A dead input channel (never active) gets weight 0 and does not break the Cholesky.
    H2 = H.clone()
    H2[5, :] = 0
    H2[:, 5] = 0
    codes2, s2, z2 = gptq_quantize(w, H2, 4, 64, True, damp=0.1)
    assert torch.isfinite(dequantize(codes2, s2, z2, 64)).all()


def test_awq_search_and_clip_not_worse_than_rtn():
    x, w = correlated(), weight()
    ref = x @ w.T

    def err(cands):
        return float((x @ cands[0].T - ref).pow(2).mean())

    s, alpha, errors = awq_search([w], x.abs().mean(0), err, 4, 64, True, grid=20)
    assert len(errors) == 20 and errors[0] == pytest.approx(err([fake_quantize(w, 4, 64, True)]))
    assert min(errors) <= errors[0] and alpha > 0         # scaling helps with outlier inputs
    w_awq = awq_candidate(w, s, 4, 64, True)
    assert err([w_awq]) < 0.9 * errors[0]
    # Clipping on top: per group, never worse than no clipping on the same rows.
    ws, xs = w * s, x / s
    clip = awq_clip(ws, xs[:512], 4, 64, True)
    assert clip.shape == (128, 4) and float(clip.min()) >= 0.5 and float(clip.max()) <= 1.0
    base = float((xs[:512] @ (ws - fake_quantize(ws, 4, 64, True)).T).pow(2).sum())
    clipped = float((xs[:512] @ (ws - fake_quantize(ws, 4, 64, True, clip)).T).pow(2).sum())
    assert clipped <= base
