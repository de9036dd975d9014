import pytest
import torch
import torch.nn as nn

import slimkit as sk
from slimkit.core.selection import select_weights
from tests.conftest import LSTMNet, SubclassedNet, TransformerNet


def names(sel):
    return [f"{m}.{t}" for m, t in sel]


def test_default_selection_covers_every_weight_kind_and_skips_norms_and_biases():
    assert names(select_weights(SubclassedNet())) == [
        "stem.weight", "blocks.0.inner.proj.weight", "blocks.1.inner.proj.weight",
        "classifier.0.weight", "classifier.2.weight",
    ]
    assert names(select_weights(LSTMNet())) == [
        "lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.weight_ih_l1", "lstm.weight_hh_l1",
        "head.weight",
    ]
    sel = names(select_weights(TransformerNet()))
    assert "encoder.layers.0.self_attn.in_proj_weight" in sel
    assert "encoder.layers.0.self_attn.out_proj.weight" in sel
    assert "encoder.layers.1.linear2.weight" in sel and len(sel) == 9


@pytest.mark.parametrize("pattern", ["Linear", "nn.Linear", "torch.nn.Linear", nn.Linear])
def test_type_patterns(pattern):
    assert names(select_weights(SubclassedNet(), targets=[pattern])) == [
        "blocks.0.inner.proj.weight", "blocks.1.inner.proj.weight",
        "classifier.0.weight", "classifier.2.weight",
    ]


def test_globs_regexes_and_subtrees():
    model = SubclassedNet()
    assert names(select_weights(model, targets=["blocks.*.inner.proj"])) == [
        "blocks.0.inner.proj.weight", "blocks.1.inner.proj.weight"]
    assert names(select_weights(model, targets=[r"re:blocks\.1\..*"])) == ["blocks.1.inner.proj.weight"]
    # A name names its whole subtree: ignoring "classifier" skips both of its Linears.
    assert names(select_weights(model, ignore=["classifier", "stem"])) == [
        "blocks.0.inner.proj.weight", "blocks.1.inner.proj.weight"]
    assert names(select_weights(model, targets=["blocks"], ignore=["re:.*1.*"])) == [
        "blocks.0.inner.proj.weight"]


def test_selection_errors():
    model = SubclassedNet()
    with pytest.raises(ValueError, match=r"targets entry 'decoder' matches no module in SubclassedNet"):
        select_weights(model, targets=["decoder"])
    with pytest.raises(ValueError, match=r"targets entry 'LayerNorm' selects LayerNorm, which has no weight"):
        select_weights(model, targets=["LayerNorm"])
    with pytest.raises(ValueError, match="matches no layer with a weight"):
        select_weights(model, targets=["Linear"], ignore=["Linear"])
    with pytest.raises(ValueError, match="invalid regular expression"):
        select_weights(model, targets=["re:("])
    with pytest.warns(UserWarning, match="ignore entry 'clasifier' matches no module"):
        select_weights(model, ignore=["clasifier"])


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(6, 6))

    def forward(self, x):
        return x @ self.kernel


def test_unknown_layers_are_skipped_with_a_warning_listing_them_and_can_be_registered():
    model = nn.Sequential(nn.Linear(6, 6), Gated())
    with pytest.warns(UserWarning, match=r"skipped 1 layer\(s\).*1 \(Gated\).*register_weights"):
        assert names(select_weights(model)) == ["0.weight"]
    sk.register_weights(Gated, ["kernel"])
    try:
        assert names(select_weights(model)) == ["0.weight", "1.kernel"]
        sk.prune(model, sk.MagnitudePruningConfig(0.5), targets=["Gated"])
        assert float((model[1].kernel == 0).float().mean()) == pytest.approx(0.5, abs=1e-9)
    finally:
        from slimkit.core import selection
        selection._WEIGHTS.pop(Gated)
