import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import slimkit as sk
from slimkit.examples import DigitsCNN, train_with
from tests.conftest import MODEL_CASES, assert_same_state, reload_mid_training


def kernel_sparsity(w):
    return int((w == 0).sum()) / w.numel()


def test_per_layer_sparsity_is_exact_on_every_layer(seeded):
    model = DigitsCNN()
    sk.prune(model, sk.MagnitudePruningConfig(0.8))
    for name in ["conv1", "conv2", "fc1", "fc2"]:
        w = getattr(model, name).weight
        assert kernel_sparsity(w) == pytest.approx(round(0.8 * w.numel()) / w.numel(), abs=1e-12)


def test_pruned_weights_are_the_smallest(seeded):
    model = nn.Linear(32, 32)
    raw = model.weight.detach().clone()
    sk.prune(model, sk.MagnitudePruningConfig(0.5))
    kept, dropped = raw[model.weight != 0].abs(), raw[model.weight == 0].abs()
    assert kept.min() >= dropped.max()


def test_global_scope_ranks_all_layers_together(seeded):
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    with torch.no_grad():
        model[1].weight.mul_(10.0)  # the second layer's weights are 10x larger
    sk.prune(model, sk.MagnitudePruningConfig(0.5, scope="global"))
    s0, s1 = kernel_sparsity(model[0].weight), kernel_sparsity(model[1].weight)
    assert (s0 + s1) / 2 == pytest.approx(0.5, abs=1e-9)
    assert s0 > 0.9 and s1 < 0.1


@pytest.mark.parametrize("block", [(1, 4), (4, 1), (2, 2)])
def test_block_sparsity_prunes_whole_blocks(seeded, block):
    model = nn.Sequential(nn.Linear(24, 16), nn.Conv2d(4, 8, 3))
    sk.prune(model, sk.MagnitudePruningConfig(0.5, block_size=block))
    bh, bw = block
    for layer in model:
        mask = layer.parametrizations.weight[0].mask.reshape(layer.weight.shape[0], -1)
        blocks = mask.unfold(0, bh, bh).unfold(1, bw, bw).reshape(-1, bh * bw)
        assert ((blocks.sum(1) == 0) | (blocks.sum(1) == bh * bw)).all()
        assert kernel_sparsity(layer.weight) == pytest.approx(0.5, abs=1e-9)


def test_block_sparsity_with_edge_blocks(seeded):
    model = nn.Linear(10, 6)  # 10 columns: the last 1x4 block has 2 real entries
    sk.prune(model, sk.MagnitudePruningConfig(0.5, block_size=(1, 4), block_reduce="max"))
    mask = model.parametrizations.weight[0].mask
    assert mask.shape == (6, 10)
    assert torch.equal(mask[:, 0:4].amin(1), mask[:, 0:4].amax(1))


def test_masked_weights_get_zero_gradient_and_stay_zero_while_training(seeded):
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    sk.prune(model, sk.MagnitudePruningConfig(0.7))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    mask = model[0].parametrizations.weight[0].mask.clone()
    for _ in range(20):
        loss = F.cross_entropy(model(torch.randn(8, 16)), torch.randint(0, 4, (8,)))
        opt.zero_grad()
        loss.backward()
        grad = model[0].parametrizations.weight.original.grad
        assert torch.all(grad[mask == 0] == 0)
        opt.step()
    assert torch.all(model[0].weight[mask == 0] == 0)
    sk.strip(model)
    assert torch.all(model[0].weight[mask == 0] == 0)
    assert kernel_sparsity(model[0].weight) == pytest.approx(0.7, abs=1 / 256)


def test_sk_prune_rejects_other_configs():
    # sk.prune takes any config of the pruning family; the message lists them.
    with pytest.raises(TypeError, match=r"sk.prune takes a .*MagnitudePruningConfig.* \(the "
                                        r"pruning family\), got ConstantSparsity"):
        sk.prune(nn.Linear(2, 2), sk.ConstantSparsity(0.5))


@pytest.mark.parametrize(
    "layer, x",
    [
        (nn.Conv1d(3, 8, 3), torch.randn(2, 3, 10)),
        (nn.Conv3d(2, 4, 3), torch.randn(1, 2, 5, 5, 5)),
        (nn.ConvTranspose2d(4, 6, 3), torch.randn(2, 4, 5, 5)),
        (nn.ConvTranspose1d(4, 6, 3), torch.randn(2, 4, 5)),
        (nn.Embedding(20, 8), torch.randint(0, 20, (2, 6))),
        (nn.GRU(6, 8), torch.randn(4, 2, 6)),
        (nn.RNN(6, 8, num_layers=2), torch.randn(4, 2, 6)),
    ],
)
def test_every_default_layer_kind_prunes_and_strips(seeded, layer, x):
    sk.prune(layer, sk.MagnitudePruningConfig(0.5))
    out = layer(x)
    out = out[0] if isinstance(out, tuple) else out
    sk.strip(layer)
    again = layer(x)
    again = again[0] if isinstance(again, tuple) else again
    assert torch.allclose(out, again, atol=1e-6)
    for name, p in layer.named_parameters():
        if name.startswith("weight"):
            assert kernel_sparsity(p) == pytest.approx(0.5, abs=1 / p.numel())


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_model_zoo_prunes_strips_and_exports(case, tmp_path, seeded):
    cls, make_x = MODEL_CASES[case]
    model = cls().eval()
    x = make_x()
    sk.prune(model, sk.MagnitudePruningConfig(0.6))
    prepared_out = model(x)
    path = sk.export_onnx(model, tmp_path / f"{case}.onnx", example_inputs=x)
    from slimkit.export import ort_session

    sess = ort_session(path)
    got = sess.run(None, {"input": x.numpy()})[0]
    assert torch.allclose(torch.from_numpy(got), prepared_out, atol=1e-4, rtol=1e-3)
    sk.strip(model)
    assert torch.allclose(model(x), prepared_out, atol=1e-6)
    weights = [p for n, p in model.named_parameters() if p.dim() >= 2]
    assert all(kernel_sparsity(w) == pytest.approx(0.6, abs=1 / w.numel() + 1e-9) for w in weights)


def _run(model, data, opt, sched, epochs, start=0):
    train_with(model, data, opt, epochs=epochs, seed=3, scheduler=sched, start_epoch=start)


def test_resume_mid_schedule_is_bit_identical(tmp_path, digits):
    """Stop mid-schedule, save, load into a fresh model, finish: same masks and weights."""
    small = copy.copy(digits)
    small.x_train, small.y_train = digits.x_train[:320], digits.y_train[:320]  # 10 steps/epoch
    cfg = sk.MagnitudePruningConfig(sk.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=30,
                                                        frequency=5))

    def fresh():
        torch.manual_seed(0)
        m = DigitsCNN()
        sk.prune(m, cfg)
        return m

    a = fresh()
    opt_a = torch.optim.Adam(a.parameters(), lr=1e-3)
    _run(a, small, opt_a, sk.Scheduler(a), epochs=4)

    b = fresh()
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-3)
    _run(b, small, opt_b, sk.Scheduler(b), epochs=2)  # stop at step 20 of 30
    c, opt_c = reload_mid_training(b, opt_b, tmp_path / "ckpt.pt")
    del b, opt_b
    _run(c, small, opt_c, sk.Scheduler(c), epochs=4, start=2)

    assert_same_state(a, c)
    assert int(c.state_dict()["fc1.parametrizations.weight.0.step"]) == 40
