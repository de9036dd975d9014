import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from click.testing import CliRunner
from onnx import load as onnx_load
from onnx import numpy_helper

import slimkit as sk
from slimkit.cli import main
from slimkit.examples import DigitsCNN
from slimkit.examples.models import ResNetStyle
from slimkit.techniques.channel_pruning import prune_channels
from slimkit.techniques.channel_pruning.channels import ChannelPruningConfig
from slimkit.techniques.pruning import check_sparsity


def groups_of(w: torch.Tensor, m: int = 4) -> torch.Tensor:
    """Groups of m consecutive input channels: rows (out, in) or (out, kh, kw, in)."""
    if w.dim() > 2:
        w = w.movedim(1, -1)
    return w.reshape(-1, m)


def nonzeros_per_group(w, m=4):
    return (groups_of(w, m) != 0).sum(1)


@pytest.mark.parametrize("pattern", ["4:2", "0:4", "4:4", "2-4", "2:4:8", "a:b", 24])
def test_bad_patterns_name_the_field(pattern):
    with pytest.raises(ValueError, match=r"MagnitudePruningConfig\.pattern"):
        sk.MagnitudePruningConfig(pattern=pattern)


def test_pattern_excludes_blocks_and_global_scope():
    with pytest.raises(ValueError, match=r"MagnitudePruningConfig\.block_size"):
        sk.MagnitudePruningConfig(pattern="2:4", block_size=(1, 4))
    with pytest.raises(ValueError, match=r"MagnitudePruningConfig\.scope"):
        sk.MagnitudePruningConfig(pattern="2:4", scope="global")
    with pytest.raises(ValueError, match=r"MagnitudePruningConfig\.schedule"):
        sk.MagnitudePruningConfig(0.0, pattern="2:4")


@pytest.mark.parametrize("pattern, n, m", [("2:4", 2, 4), ("1:4", 1, 4), ("3:8", 3, 8)])
def test_one_shot_keeps_the_n_largest_of_every_group(seeded, pattern, n, m):
    model = nn.Sequential(nn.Linear(32, 16), nn.Conv2d(16, 8, 3))
    raw = [layer.weight.detach().clone() for layer in model]
    sk.prune(model, sk.MagnitudePruningConfig(pattern=pattern))
    for layer, w0 in zip(model, raw):
        w = layer.weight.detach()
        assert torch.equal(nonzeros_per_group(w, m), torch.full_like(nonzeros_per_group(w, m), n))
        assert float((w == 0).float().mean()) == pytest.approx(1 - n / m, abs=1e-12)
        g0, g = groups_of(w0, m).abs(), groups_of(w, m)
        kept_min = torch.where(g != 0, g0, torch.inf).amin(1)
        dropped_max = torch.where(g == 0, g0, -torch.inf).amax(1)
        assert torch.all(kept_min >= dropped_max)


def test_conv_groups_run_along_input_channels_at_each_kernel_position(seeded):
    conv = nn.Conv2d(8, 4, 3)
    sk.prune(conv, sk.MagnitudePruningConfig(pattern="2:4"))
    w = conv.weight.detach()
    for i in range(3):
        for j in range(3):
            per_pos = w[:, :, i, j].reshape(4, 2, 4)  # (out, in-groups, 4)
            assert torch.all((per_pos != 0).sum(-1) == 2)


def test_layers_with_input_dim_not_divisible_by_m_are_skipped_with_a_warning(seeded):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 4))
    with pytest.warns(UserWarning, match=r"0\.weight \(input dim 3\)"):
        sk.prune(model, sk.MagnitudePruningConfig(pattern="2:4"))
    assert float((model[0].weight == 0).float().mean()) == 0.0
    assert torch.all(nonzeros_per_group(model[2].weight) == 2)


def test_gradual_schedule_ramps_the_share_of_pruned_groups(seeded):
    layer = nn.Linear(64, 32)  # 512 groups of 4
    sched = sk.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=4, power=1, frequency=1)
    sk.prune(layer, sk.MagnitudePruningConfig(sched, pattern="2:4"))
    scheduler = sk.Scheduler(layer)
    shares, previous = [], torch.zeros(512, dtype=torch.bool)
    for _ in range(5):
        pruned = nonzeros_per_group(layer.weight.detach()) <= 2
        assert torch.all(pruned[previous])  # a pruned group stays pruned
        shares.append(float(pruned.float().mean()))
        previous = pruned
        scheduler.step()
    # s(t) = 0.5 * t / 4, so the share of 2:4 groups is t / 4 (rounded to whole groups).
    assert shares == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0], abs=1 / 512)


def test_fine_tuning_keeps_the_pattern_with_zero_gradient(seeded):
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    sk.prune(model, sk.MagnitudePruningConfig(pattern="2:4"))
    mask = model[0].parametrizations.weight[0].mask.clone()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(10):
        loss = F.cross_entropy(model(torch.randn(8, 16)), torch.randint(0, 4, (8,)))
        opt.zero_grad()
        loss.backward()
        assert torch.all(model[0].parametrizations.weight.original.grad[mask == 0] == 0)
        opt.step()
    sk.strip(model)
    assert torch.all(nonzeros_per_group(model[0].weight) <= 2)
    assert check_sparsity(model, "2:4").ok


def test_two_four_holds_exactly_after_strip_and_after_export(seeded, tmp_path):
    model = ResNetStyle().eval()
    x = torch.randn(2, 3, 64, 64)
    with pytest.warns(UserWarning, match="stem"):
        sk.prune(model, sk.MagnitudePruningConfig(pattern="2:4"))
    path = sk.export_onnx(model, tmp_path / "r.onnx", example_inputs=x)
    sk.strip(model)
    torch_report = check_sparsity(model, "2:4")
    assert torch_report.ok and len(torch_report.checked) == 15  # 16 conv/linear minus the stem
    # Read the initializers directly: every Conv kernel except the 3-channel stem is 2:4.
    onnx_model = onnx_load(str(path))
    conv_weights = {n.input[1] for n in onnx_model.graph.node if n.op_type == "Conv"}
    checked = 0
    for init in onnx_model.graph.initializer:
        if init.name in conv_weights:
            w = torch.from_numpy(numpy_helper.to_array(init).copy())
            if w.shape[1] % 4 == 0:
                assert torch.all(nonzeros_per_group(w) <= 2), init.name
                checked += 1
    assert checked == 14  # 14 convs (+ fc, a Gemm) are 2:4
    file_report = check_sparsity(path, "2:4")
    assert file_report.ok and len(file_report.checked) == 15
    assert [w.status for w in file_report.weights].count("skipped") == 1


def test_cli_check_sparsity_exit_codes(seeded, tmp_path):
    x = torch.randn(2, 16)
    dense = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    dense_path = sk.export_onnx(dense, tmp_path / "dense.onnx", example_inputs=x)
    sk.prune(dense, sk.MagnitudePruningConfig(pattern="2:4"))
    sparse_path = sk.export_onnx(dense, tmp_path / "sparse.onnx", example_inputs=x)
    runner = CliRunner()
    ok = runner.invoke(main, ["check-sparsity", str(sparse_path), "--pattern", "2:4"])
    assert ok.exit_code == 0, ok.output
    assert "all 2 checked weight(s) satisfy 2:4" in ok.output
    bad = runner.invoke(main, ["check-sparsity", str(dense_path)])
    assert bad.exit_code == 1 and "2 of 2 weight(s) violate 2:4" in bad.output
    loose = runner.invoke(main, ["check-sparsity", str(sparse_path), "--pattern", "1:4"])
    assert loose.exit_code == 1
    assert runner.invoke(main, ["check-sparsity", str(sparse_path), "--pattern", "4:2"]).exit_code == 2
    assert runner.invoke(main, ["check-sparsity", str(tmp_path / "nope.onnx")]).exit_code == 2
    (tmp_path / "junk.onnx").write_text("not onnx")
    assert runner.invoke(main, ["check-sparsity", str(tmp_path / "junk.onnx")]).exit_code == 2


def test_nm_save_load_resumes_with_the_same_masks(seeded, tmp_path):
    model = DigitsCNN()
    with pytest.warns(UserWarning, match="conv1"):
        sk.prune(model, sk.MagnitudePruningConfig(pattern="2:4"))
    sk.save(model, tmp_path / "nm.pt")
    torch.manual_seed(5)
    with pytest.warns(UserWarning, match="conv1"):
        again = sk.load(tmp_path / "nm.pt", model=DigitsCNN())
    assert again._slimkit_records[0]["config"]["_data"]["pattern"] == "2:4"
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_nm_after_channel_pruning_saves_and_loads(seeded, tmp_path):
    model = DigitsCNN()
    x = torch.randn(4, 1, 8, 8)
    prune_channels(model, ChannelPruningConfig(0.5), example_inputs=x)
    with pytest.warns(UserWarning, match="conv1"):
        sk.prune(model, sk.MagnitudePruningConfig(pattern="2:4"))
    sk.save(model, tmp_path / "both.pt")
    with pytest.warns(UserWarning, match="conv1"):
        again = sk.load(tmp_path / "both.pt", model=DigitsCNN())
    assert torch.allclose(again(x), model(x), atol=1e-6)
    sk.strip(again)
    assert again.conv2.weight.shape == (32, 16, 3, 3)
    assert check_sparsity(again, "2:4").ok
