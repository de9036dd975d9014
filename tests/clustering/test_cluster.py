import copy
import warnings

import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import numpy_helper

import slimkit as sk
from slimkit.examples import DigitsCNN, train_with
from slimkit.export import ort_session
from slimkit.techniques.clustering import ClusteringConfig, ClusterSnap, cluster
from slimkit.techniques.clustering.kmeans import INITS
from tests.conftest import MODEL_CASES, assert_same_state, reload_mid_training

KERNELS = ["conv1", "conv2", "fc1", "fc2"]


def snap_of(module, name="weight") -> ClusterSnap:
    return next(p for p in module.parametrizations[name] if isinstance(p, ClusterSnap))


def unique_per_row(w):
    return max(int(r.unique().numel()) for r in w.reshape(w.shape[0], -1))


# -- config and errors ------------------------------------------------------------------------


def test_config_round_trips_and_validates():
    cfg = ClusteringConfig(8, init="density", per_channel=True, preserve_sparsity=True,
                           gradient_aggregation="mean", refresh_every=10, seed=3)
    assert sk.Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("kwargs, field", [
    ({"clusters": 1}, "clusters"),
    ({"clusters": 2.5}, "clusters"),
    ({"init": "kmeans"}, "init"),
    ({"gradient_aggregation": "max"}, "gradient_aggregation"),
    ({"refresh_every": -1}, "refresh_every"),
    ({"seed": -2}, "seed"),
    ({"per_channel": 1}, "per_channel"),
])
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"\(ClusteringConfig\.{field}\)"):
        ClusteringConfig(**kwargs)


def test_more_clusters_than_weights_names_the_layer():
    model = nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 2))  # "2" has 16 weights
    with pytest.raises(ValueError, match=r"clusters=32 is more than the 16 weights of 2\.weight"):
        cluster(model, ClusteringConfig(32))
    assert not sk.records(model)  # nothing was attached
    with pytest.raises(ValueError, match=r"the 8 weights per channel of 2\.weight"):
        cluster(model, ClusteringConfig(12, per_channel=True))


def test_sk_cluster_rejects_other_configs_and_is_registered():
    with pytest.raises(TypeError, match="sk.cluster takes a ClusteringConfig"):
        cluster(nn.Linear(4, 4), sk.MagnitudePruningConfig(0.5))
    tech = sk.get_technique("weight-clustering")
    assert tech.family == "clustering" and tech.config_cls is ClusteringConfig


# -- the parametrization ----------------------------------------------------------------------


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("per_channel", [False, True])
def test_strip_leaves_at_most_k_values_per_layer(seeded, init, per_channel):
    model = DigitsCNN()
    x = torch.randn(4, 1, 8, 8)
    cfg = ClusteringConfig(8, init=init, per_channel=per_channel)
    cluster(model, cfg)
    before = model(x)
    sk.strip(model)
    assert torch.equal(model(x), before)  # strip bakes exactly what the model computed
    for name in KERNELS:
        w = getattr(model, name).weight
        assert type(w) is nn.Parameter
        if per_channel:
            assert unique_per_row(w) <= 8
        else:
            assert int(w.unique().numel()) == 8  # k-means uses all 8 on 288+ weights


def test_centroids_are_parameters_saved_in_the_state_dict(seeded):
    model = DigitsCNN()
    cluster(model, ClusteringConfig(16))
    names = [n for n, _ in model.named_parameters()]
    assert "fc1.parametrizations.weight.0.centroids" in names
    sd = model.state_dict()
    assert sd["fc1.parametrizations.weight.0.centroids"].shape == (16,)
    assert sd["fc1.parametrizations.weight.0.labels"].dtype == torch.uint8
    assert "fc1.parametrizations.weight.0.step" in sd
    other = DigitsCNN()
    cluster(other, ClusteringConfig(16, seed=5))
    other.load_state_dict(sd)
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(other(x), model(x))  # the loaded labels replace the cached index


@pytest.mark.parametrize("aggregation", ["sum", "mean"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_centroid_gradient_aggregates_member_gradients(seeded, aggregation, per_channel):
    layer = nn.Linear(32, 8)
    cluster(layer, ClusteringConfig(4, per_channel=per_channel, gradient_aggregation=aggregation,
                                    refresh_every=10))
    p = snap_of(layer)
    x = torch.randn(16, 32)
    layer(x).square().sum().backward()
    # The gradient w.r.t. the snapped weight, computed independently on a plain copy.
    w = layer.weight.detach().clone().requires_grad_(True)
    F.linear(x, w, layer.bias.detach()).square().sum().backward()
    g = w.grad
    labels = p.labels.long()
    rows = range(8) if per_channel else [None]
    for r in rows:
        lab = labels[r] if per_channel else labels
        gr = g[r] if per_channel else g
        for j in range(4):
            members = gr[lab == j]
            want = members.sum() if aggregation == "sum" else members.mean()
            got = p.centroids.grad[r, j] if per_channel else p.centroids.grad[j]
            assert got == pytest.approx(float(want), rel=1e-5, abs=1e-6)
    # Straight through: the weight below gets the snapped weight's gradient unchanged.
    assert torch.allclose(layer.parametrizations.weight.original.grad, g, atol=1e-6)


def test_without_refresh_the_weights_below_get_no_gradient(seeded):
    layer = nn.Linear(32, 8)
    cluster(layer, ClusteringConfig(4))  # refresh_every=0: the weights could change nothing
    original = layer.parametrizations.weight.original
    before = original.detach().clone()
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    layer(torch.randn(16, 32)).square().sum().backward()
    assert original.grad is None and snap_of(layer).centroids.grad is not None
    opt.step()
    assert torch.equal(original, before)  # Adam skips it: no wasted update, no moments


def test_refresh_reassigns_weights_to_their_nearest_centroid(seeded):
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    cluster(model, ClusteringConfig(4, refresh_every=5))
    p = snap_of(model[0])
    labels0 = p.labels.clone()
    sched = sk.Scheduler(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(10):
        loss = F.cross_entropy(model(torch.randn(8, 16)), torch.randint(0, 4, (8,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    assert int(p.step) == 10
    assert not torch.equal(p.labels, labels0)  # lr 0.5 moves weights across midpoints
    # Right after a refresh step (10), every weight sits on its nearest centroid.
    original = model[0].parametrizations.weight.original.detach()
    nearest = (original[..., None] - p.centroids.detach()).abs().argmin(-1)
    assert torch.equal(p.labels.long(), nearest)


def test_no_refresh_keeps_labels(seeded):
    model = nn.Sequential(nn.Linear(16, 8))
    cluster(model, ClusteringConfig(4))  # refresh_every=0: never
    p = snap_of(model[0])
    labels0 = p.labels.clone()
    sched = sk.Scheduler(model)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(5):
        model(torch.randn(4, 16)).sum().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    assert torch.equal(p.labels, labels0)


def test_layer_with_fewer_distinct_values_than_clusters_keeps_them(seeded, tmp_path):
    layer = nn.Linear(16, 16)
    values = torch.tensor([-1.0, 0.0, 2.0])[torch.randint(0, 3, (16, 16))]
    with torch.no_grad():
        layer.weight.copy_(values)
    cluster(layer, ClusteringConfig(8, per_channel=False))
    assert snap_of(layer).centroids.shape == (8,)  # padded: the shape never depends on data
    assert torch.equal(layer.weight, values)  # 3 values are their own exact codebook
    sk.save(layer, tmp_path / "c.pt")
    fresh = sk.load(tmp_path / "c.pt", model=nn.Linear(16, 16))  # random init: k distinct
    assert torch.equal(fresh.weight, values)


# -- sparsity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("per_channel", [False, True])
def test_preserve_sparsity_keeps_the_zero_pattern_bit_for_bit(seeded, tmp_path, per_channel):
    model = DigitsCNN()
    sk.prune(model, sk.MagnitudePruningConfig(0.8))
    zeros = {n: (getattr(model, n).weight == 0).clone() for n in KERNELS}
    ignore = ["conv1"] if per_channel else None  # conv1 has 9 weights per channel
    cluster(model, ClusteringConfig(16, per_channel=per_channel, preserve_sparsity=True,
                                    refresh_every=3), ignore=ignore)
    assert type(model.fc1.parametrizations.weight[1]) is ClusterSnap  # mask -> cluster
    sched = sk.Scheduler(model)
    # Weight decay pulls every centroid toward 0; the fixed one must be 0 already and stay.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)
    for _ in range(7):
        loss = F.cross_entropy(model(torch.randn(8, 1, 8, 8)), torch.randint(0, 10, (8,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    x = torch.randn(4, 1, 8, 8)
    ref = model(x)
    path = sk.export_onnx(model, tmp_path / "m.onnx", example_inputs=x)
    sk.strip(model)
    assert torch.allclose(model(x), ref, atol=1e-6)
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    for n in KERNELS:
        w = getattr(model, n).weight.detach()
        assert torch.equal(w == 0, zeros[n]), n
        assert not torch.signbit(w[w == 0]).any()  # +0.0 everywhere
        onnx_w = torch.from_numpy(inits[f"{n}.weight"].copy())
        assert torch.equal(onnx_w == 0, zeros[n]), n
        if n != "conv1" or not per_channel:
            k = unique_per_row(w) if per_channel else int(w.unique().numel())
            assert k <= 16


def test_without_preserve_sparsity_zeros_are_clustered_like_any_weight(seeded):
    layer = nn.Linear(64, 64)
    sk.prune(layer, sk.MagnitudePruningConfig(0.2))
    cluster(layer, ClusteringConfig(2))
    sk.strip(layer)
    # Two centroids near -0.06 and 0.06 (uniform init): the zeros join one of them.
    assert int((layer.weight == 0).sum()) == 0


# -- coverage ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layer, x",
    [
        (nn.Conv1d(3, 8, 3), torch.randn(2, 3, 10)),
        (nn.Conv3d(2, 4, 3), torch.randn(1, 2, 5, 5, 5)),
        (nn.ConvTranspose2d(4, 6, 3), torch.randn(2, 4, 5, 5)),
        (nn.Embedding(20, 8), torch.randint(0, 20, (2, 6))),
        (nn.GRU(6, 8), torch.randn(4, 2, 6)),
        (nn.LSTM(6, 8, num_layers=2), torch.randn(4, 2, 6)),
        (nn.MultiheadAttention(8, 2), torch.randn(5, 2, 8)),
    ],
)
def test_every_default_layer_kind_clusters_and_strips(seeded, layer, x):
    def run():
        out = layer(x, x, x) if isinstance(layer, nn.MultiheadAttention) else layer(x)
        return out[0] if isinstance(out, tuple) else out

    cluster(layer, ClusteringConfig(4, per_channel=isinstance(layer, nn.Conv1d)))
    out = run()
    sk.strip(layer)
    assert torch.allclose(run(), out, atol=1e-6)
    weights = {n: p for n, p in layer.named_parameters() if "weight" in n and p.dim() >= 2}
    assert weights
    for name, w in weights.items():
        if isinstance(layer, nn.MultiheadAttention) and name.startswith("out_proj"):
            assert w.unique().numel() == 4  # out_proj is a Linear: selected on its own
        elif isinstance(layer, nn.Conv1d):
            assert unique_per_row(w) == 4
        else:
            assert w.unique().numel() == 4, name


def test_depthwise_convs_are_skipped_with_a_warning_unless_included(seeded):
    def net():
        return nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 4, 1))

    model = net()
    with pytest.warns(UserWarning, match=r"skipped 1 depthwise convolution\(s\): 1 \(Conv2d\)"):
        cluster(model, ClusteringConfig(4))
    assert [r["layers"] for r in sk.records(model)] == [[["0", "weight"], ["2", "weight"]]]
    assert not hasattr(model[1], "parametrizations")
    model = net()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cluster(model, ClusteringConfig(4, include_depthwise=True))
    assert isinstance(model[1].parametrizations.weight[0], ClusterSnap)


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_model_zoo_clusters_strips_and_exports(case, tmp_path, seeded):
    cls, make_x = MODEL_CASES[case]
    model = cls().eval()
    x = make_x()
    cluster(model, ClusteringConfig(8))
    prepared_out = model(x)
    path = sk.export_onnx(model, tmp_path / f"{case}.onnx", example_inputs=x, compact=True)
    got = ort_session(path).run(None, {"input": x.numpy()})[0]
    assert torch.allclose(torch.from_numpy(got), prepared_out, atol=1e-4, rtol=1e-3)
    sk.strip(model)
    assert torch.allclose(model(x), prepared_out, atol=1e-6)
    for name, w in model.named_parameters():
        if w.dim() >= 2 and "norm" not in name:
            assert w.unique().numel() <= 8, name


def test_tied_weights_share_one_codebook(seeded):
    from tests.conftest import TiedLM

    model = TiedLM()
    cluster(model, ClusteringConfig(8), targets=["embed"])
    assert snap_of(model.embed) is snap_of(model.head)
    sk.strip(model)
    assert model.head.weight is model.embed.weight
    assert model.embed.weight.unique().numel() == 8


# -- copies, stacking, save / resume ----------------------------------------------------------


def test_deepcopy_and_export_leave_the_original_prepared(seeded, tmp_path):
    model = DigitsCNN()
    cluster(model, ClusteringConfig(8))
    x = torch.randn(4, 1, 8, 8)
    ref = model(x)
    twin = copy.deepcopy(model)
    sk.strip(twin)
    sk.export_onnx(model, tmp_path / "m.onnx", example_inputs=x, compact=True)
    assert isinstance(model.fc1.parametrizations.weight[0], ClusterSnap)
    assert torch.equal(model(x), ref) and torch.equal(twin(x), ref)
    model(x).sum().backward()  # still trainable
    assert model.fc1.parametrizations.weight[0].centroids.grad is not None


def test_cluster_then_prune_is_refused_since_the_snap_would_undo_the_mask(seeded):
    # The mask would go under the snap, whose assignment was computed on the dense weight:
    # the pruned zeros would come back as centroids (sparsity 0.0 after strip).
    layer = nn.Linear(32, 16)
    cluster(layer, ClusteringConfig(8))
    with pytest.raises(ValueError, match="mask -> cluster"):
        sk.prune(layer, sk.MagnitudePruningConfig(0.5))
    assert [type(p).__name__ for p in layer.parametrizations.weight] == ["ClusterSnap"]


def test_resume_mid_fine_tune_is_bit_identical(tmp_path, digits):
    """Stop mid fine-tune, save, load into a fresh model, finish: same centroids and labels."""
    small = copy.copy(digits)
    small.x_train, small.y_train = digits.x_train[:320], digits.y_train[:320]  # 10 steps/epoch
    cfg = ClusteringConfig(8, refresh_every=7, preserve_sparsity=True)

    def fresh():
        torch.manual_seed(0)
        m = DigitsCNN()
        sk.prune(m, sk.MagnitudePruningConfig(0.5))
        cluster(m, cfg)
        return m

    def run(model, opt, epochs, start=0):
        train_with(model, small, opt, epochs=epochs, seed=3, scheduler=sk.Scheduler(model),
                   start_epoch=start)

    a = fresh()
    opt_a = torch.optim.Adam(a.parameters(), lr=1e-3)
    run(a, opt_a, epochs=4)

    b = fresh()
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-3)
    run(b, opt_b, epochs=2)  # stop at step 20: refreshes at 7 and 14 done, 21 and 28 to come
    c, opt_c = reload_mid_training(b, opt_b, tmp_path / "ckpt.pt")
    del b, opt_b
    run(c, opt_c, epochs=4, start=2)

    assert_same_state(a, c)
    assert int(c.state_dict()["fc1.parametrizations.weight.1.step"]) == 40
