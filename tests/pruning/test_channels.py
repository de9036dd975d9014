import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import slimkit as sk
from slimkit.examples import DigitsCNN, accuracy_eval, train
from slimkit.examples.models import MobileNetV2Style, ResNetStyle, TransformerClassifier
from slimkit.export import ort_session
from slimkit.techniques.channel_pruning import ChannelPruningConfig, count_macs, prune_channels
from slimkit.techniques.channel_pruning.channels import output_layer

# model class, example input, output layer, the least MAC reduction at 50% channels
MODELS = {
    "digits": (DigitsCNN, lambda: torch.randn(4, 1, 8, 8), "fc2", 3.5),
    "resnet": (ResNetStyle, lambda: torch.randn(4, 3, 64, 64), "fc", 3.5),
    "mobilenet": (MobileNetV2Style, lambda: torch.randn(4, 3, 96, 96), "classifier", 3.0),
    "transformer": (TransformerClassifier, lambda: torch.randint(0, 1000, (4, 16)), "head", 3.5),
}


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("case", sorted(MODELS))
def test_every_model_prunes_half_its_channels_exports_and_matches_in_ort(case, seeded, tmp_path):
    cls, make_x, head, min_reduction = MODELS[case]
    model = cls().eval()
    x = make_x()
    assert output_layer(model, x) == head
    classes = model.get_submodule(head).out_features
    macs, params = count_macs(model, x)
    prune_channels(model, ChannelPruningConfig(0.5), example_inputs=x)
    macs2, params2 = count_macs(model, x)
    assert macs / macs2 >= min_reduction and params / params2 >= 2.5
    assert model.get_submodule(head).out_features == classes  # the classifier is kept whole
    assert type(model) is cls and not hasattr(model, "parametrizations")
    path = sk.export_onnx(model, tmp_path / f"{case}.onnx", example_inputs=x)
    got = ort_session(path).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = model(x)
    assert torch.allclose(torch.from_numpy(got), want, atol=1e-4, rtol=1e-3)


def test_half_the_channels_of_every_conv_are_removed(seeded):
    model = ResNetStyle()
    prune_channels(model, ChannelPruningConfig(0.5), example_inputs=torch.randn(2, 3, 64, 64))
    convs = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert convs["stem.0"] == 16 and convs["blocks.5.conv2.0"] == 64
    assert all(c in (16, 32, 64) for c in convs.values())


@pytest.mark.parametrize("importance", ["l1", "l2", "bn_scale"])
def test_importances_choose_channels_and_the_result_runs(importance, seeded):
    model = ResNetStyle().eval()
    x = torch.randn(2, 3, 64, 64)
    prune_channels(model, ChannelPruningConfig(0.5, importance=importance), example_inputs=x)
    assert model.stem[0].out_channels == 16 and model(x).shape == (2, 10)


def test_bn_scale_keeps_the_channels_with_the_largest_gamma(seeded):
    model = ResNetStyle().eval()
    with torch.no_grad():
        model.blocks[0].conv1[1].weight.copy_(torch.arange(1, 33, dtype=torch.float32))
    keep = model.blocks[0].conv1[0].weight[16:].detach().clone()
    prune_channels(model, ChannelPruningConfig(0.5, importance="bn_scale"),
                   example_inputs=torch.randn(2, 3, 64, 64))
    # the stem was halved too, so compare the surviving input channels' slice by shape only
    assert model.blocks[0].conv1[0].weight.shape == (16, 16, 3, 3) and keep.shape[0] == 16
    assert torch.equal(model.blocks[0].conv1[1].weight, torch.arange(17, 33, dtype=torch.float32))


def test_taylor_needs_a_loss_and_batches_and_uses_gradients(seeded, digits):
    model = DigitsCNN()
    x = digits.x_train[:8]
    with pytest.raises(ValueError, match=r"prune_channels\.loss_fn"):
        prune_channels(model, ChannelPruningConfig(0.5, importance="taylor"), example_inputs=x)
    with pytest.raises(ValueError, match=r"prune_channels\.batches"):
        prune_channels(model, ChannelPruningConfig(0.5, importance="taylor"), example_inputs=x,
                       loss_fn=F.cross_entropy)
    batches = [(digits.x_train[i:i + 64], digits.y_train[i:i + 64]) for i in (0, 64)]
    prune_channels(model, ChannelPruningConfig(0.5, importance="taylor"), example_inputs=x,
                   loss_fn=F.cross_entropy, batches=batches)
    assert model.conv1.out_channels == 16 and model.fc1.out_features == 64
    assert all(p.grad is None for p in model.parameters())


def test_global_scope_overrides_and_ignore(seeded):
    x = torch.randn(2, 1, 8, 8)
    model = DigitsCNN()
    with torch.no_grad():
        model.conv2.weight[:48].mul_(0.01)  # 48 of conv2's 64 channels are almost zero
    prune_channels(model, ChannelPruningConfig(0.5, scope="global", max_layer_ratio=0.9),
                   example_inputs=x)
    kept = [model.conv1.out_channels, model.conv2.out_channels, model.fc1.out_features]
    assert sum(kept) == pytest.approx((32 + 64 + 128) * 0.5, abs=2)  # 50% over all groups
    # ranked together: conv2 loses its 48 weak channels, so fc1 loses less than half
    assert kept[1] == pytest.approx(16, abs=1)
    assert kept[2] / 128 > 0.55

    model = DigitsCNN()
    prune_channels(model, ChannelPruningConfig(0.5, overrides={"conv2": 0.25}, ignore=["fc1"]),
                   example_inputs=x)
    assert (model.conv1.out_channels, model.conv2.out_channels, model.fc1.out_features) == (16, 48, 128)


def test_iterative_rounds_call_the_finetune_callback(seeded):
    model = DigitsCNN()
    seen = []
    prune_channels(model, ChannelPruningConfig(0.5, rounds=3), example_inputs=torch.randn(2, 1, 8, 8),
                   finetune=lambda m, r: seen.append((r, m.conv2.out_channels)))
    # linear steps of the ratio: int(64 * (1 - 1/6)), int(64 * (1 - 1/3)), int(64 * 1/2) kept
    assert seen == [(0, 53), (1, 42), (2, 32)]


def test_bad_inputs_raise_value_errors_naming_the_field(seeded):
    x = torch.randn(2, 1, 8, 8)
    for ratio in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"ChannelPruningConfig\.ratio"):
            ChannelPruningConfig(ratio)
    with pytest.raises(ValueError, match=r"ChannelPruningConfig\.overrides\['conv1'\]"):
        ChannelPruningConfig(0.5, overrides={"conv1": 1.0})
    with pytest.raises(ValueError, match=r"ChannelPruningConfig\.importance"):
        ChannelPruningConfig(0.5, importance="l3")
    model = DigitsCNN()
    before = shapes(model)
    with pytest.raises(ValueError, match=r"prune_channels\.example_inputs"):
        prune_channels(model, ChannelPruningConfig(0.5))
    # 32 * (1 - 0.99) rounds down to 0 channels kept
    with pytest.raises(ValueError, match=r"remove every channel of conv1 \(32 channels\).*"
                                         r"overrides\['conv1'\]"):
        prune_channels(model, ChannelPruningConfig(0.5, overrides={"conv1": 0.99}), example_inputs=x)
    with pytest.raises(ValueError, match=r"remove every channel of fc1.*ChannelPruningConfig\.ratio"):
        prune_channels(model, ChannelPruningConfig(0.995), example_inputs=x)
    with pytest.raises(ValueError, match=r"'nope' matches no module.*ChannelPruningConfig\.ignore"):
        prune_channels(model, ChannelPruningConfig(0.5, ignore=["nope"]), example_inputs=x)
    assert shapes(model) == before and not sk.records(model)


class HardCodedView(nn.Module):
    """Flattens with a hard-coded width: Torch-Pruning cannot follow the constant 64 * 16."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 4 * 4, 10)

    def forward(self, x):
        h = F.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.fc(h.reshape(-1, 64 * 4 * 4))


class Argmax(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(x).argmax(1)


def test_models_torch_pruning_cannot_trace_get_a_clear_error(seeded):
    model = HardCodedView()
    with pytest.raises(ValueError, match=r"cannot handle an operation of HardCodedView.*"
                                         r"in forward\(\): `return self\.fc\(h\.reshape"):
        prune_channels(model, ChannelPruningConfig(0.5, keep_output_layer=False, ignore=["fc"]),
                       example_inputs=torch.randn(2, 1, 8, 8))
    assert model.conv.out_channels == 64
    with pytest.raises(ValueError, match=r"cannot trace Argmax.*argmax"):
        prune_channels(Argmax(), ChannelPruningConfig(0.5), example_inputs=torch.randn(2, 8))


def test_parametrized_models_must_be_stripped_first(seeded):
    model = DigitsCNN()
    sk.prune(model, sk.MagnitudePruningConfig(0.5))
    with pytest.raises(ValueError, match="magnitude-pruning attached.*sk.strip"):
        prune_channels(model, ChannelPruningConfig(0.5), example_inputs=torch.randn(2, 1, 8, 8))


@pytest.mark.parametrize("strip_first", [False, True])
def test_save_load_rebuilds_the_pruned_architecture(seeded, tmp_path, strip_first):
    x = torch.randn(4, 3, 96, 96)
    model = MobileNetV2Style().eval()
    prune_channels(model, ChannelPruningConfig(0.5), example_inputs=x)
    if strip_first:
        sk.strip(model)  # a plain model keeps its architecture record
    sk.save(model, tmp_path / "small.pt")
    payload = torch.load(tmp_path / "small.pt", weights_only=True)  # no pickled modules
    assert payload["records"][0]["technique"] == "pruned-architecture"
    torch.manual_seed(7)
    fresh = sk.load(tmp_path / "small.pt", model=MobileNetV2Style()).eval()
    assert shapes(fresh) == shapes(model)
    assert fresh.blocks[1].body[2][0].groups == model.blocks[1].body[2][0].groups > 1
    assert torch.allclose(fresh(x), model(x), atol=1e-6)
    with pytest.raises(ValueError, match="does not have"):
        sk.load(tmp_path / "small.pt", model=ResNetStyle())


def test_transformer_save_load_round_trips(seeded, tmp_path):
    ids = torch.randint(0, 1000, (2, 12))
    model = TransformerClassifier().eval()
    prune_channels(model, ChannelPruningConfig(0.5), example_inputs=ids)
    attn = model.encoder.layers[0].self_attn
    assert (attn.embed_dim, attn.num_heads, attn.head_dim) == (32, 4, 8)
    assert model.encoder.layers[0].linear1.out_features == 128
    sk.save(model, tmp_path / "t.pt")
    fresh = sk.load(tmp_path / "t.pt", model=TransformerClassifier()).eval()
    assert torch.allclose(fresh(ids), model(ids), atol=1e-6)


def test_apply_with_a_channel_config_points_to_prune_channels():
    with pytest.raises(ValueError, match="sk.prune_channels"):
        sk.apply(DigitsCNN(), ChannelPruningConfig(0.5))


def test_digits_half_channels_fine_tuned_keeps_ort_accuracy(baseline, digits, tmp_path):
    """BENCHMARKS.md: 50% of channels (classifier kept), Adam 1e-4, batch 32, 5 epochs."""
    x = digits.x_test[:8]
    eval_fn = accuracy_eval(digits)
    base_path = sk.export_onnx(baseline, tmp_path / "base.onnx", example_inputs=x)
    base_acc = sk.report(base_path, x, eval_fn=eval_fn, latency_runs=0, memory=False).metrics[
        "accuracy"]
    model = copy.deepcopy(baseline)
    prune_channels(model, ChannelPruningConfig(0.5), example_inputs=x)
    train(model, digits, epochs=5, lr=1e-4, seed=0)
    path = sk.export_onnx(model, tmp_path / "small.onnx", example_inputs=x)
    acc = sk.report(path, x, eval_fn=eval_fn, latency_runs=0, memory=False).metrics["accuracy"]
    assert base_acc > 0.96
    assert acc >= base_acc - 0.015  # within 1.5 points on the ONNX Runtime artifact


def test_latency_policy_greedy_choice_is_cheapest_per_importance():
    from slimkit.techniques.channel_pruning.latency import _choose

    groups = [("a", torch.ones(8)), ("b", torch.ones(8))]
    # measured shares of the dense time saved by pruning one group alone
    saved = {("a", 0.5): 0.40, ("a", 0.75): 0.42, ("b", 0.5): 0.10, ("b", 0.75): 0.30}
    choice, left = _choose(groups, [0.5, 0.75], saved, target=1.5)
    assert choice == {"a": 0.5} and left == pytest.approx(0.60)
    choice, left = _choose(groups, [0.5, 0.75], saved, target=2.0)
    assert choice == {"a": 0.5, "b": 0.5} and left == pytest.approx(0.50)
    choice, left = _choose(groups, [0.5, 0.75], saved, target=10.0)  # unreachable: all maxed
    assert choice == {"a": 0.75, "b": 0.75} and left == pytest.approx(0.28)


def test_prune_for_latency_applies_its_choice_and_reports(seeded):
    from slimkit.techniques.channel_pruning.latency import prune_for_latency

    model = DigitsCNN().eval()
    x = torch.randn(128, 1, 8, 8)
    with pytest.raises(ValueError, match=r"prune_for_latency\.target_speedup"):
        prune_for_latency(model, x, target_speedup=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timing noise may leave the target unreachable
        model, rep = prune_for_latency(model, x, target_speedup=1.5, ratios=(0.5,), runs=5)
    assert set(rep["ratios"]) <= {"conv1", "conv2", "fc1"} and rep["ratios"]
    assert set(rep["ratios"].values()) == {0.5}
    widths = {"conv1": model.conv1.out_channels, "conv2": model.conv2.out_channels,
              "fc1": model.fc1.out_features}
    full = {"conv1": 32, "conv2": 64, "fc1": 128}
    for name, width in widths.items():
        assert width == (full[name] // 2 if name in rep["ratios"] else full[name])
    assert rep["mac_reduction"] > 1.0 and rep["pruned_ms"] > 0 and rep["dense_ms"] > 0
    assert len(rep["group_savings"]) == 3


def test_a_graph_torch_pruning_asserts_on_gets_a_value_error_and_stays_unchanged(seeded):
    class StackedLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(8, 16, num_layers=2, batch_first=True)
            self.head = nn.Linear(16, 4)

        def forward(self, x):
            return self.head(self.lstm(x)[0][:, -1])

    model = StackedLSTM()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"Torch-Pruning cannot prune StackedLSTM: .*ignore="):
        prune_channels(model, ChannelPruningConfig(ratio=0.5), example_inputs=torch.randn(2, 5, 8))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
