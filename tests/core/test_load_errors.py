"""``sk.load`` on files that are not slimkit checkpoints, on the wrong architecture, and
with its arguments in ``sk.save``'s order (issue 16, items 12 and 15)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import slimkit as sk


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.c1(x)).flatten(1))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = CNN()
    sk.prune(model, sk.MagnitudePruningConfig(0.5))
    path = tmp_path / "prepared.pt"
    sk.save(model, path)
    return model, path


def test_both_argument_orders_load_the_same_model(checkpoint):
    model, path = checkpoint
    x = torch.randn(2, 1, 8, 8)
    for fresh in (sk.load(path, CNN()), sk.load(CNN(), path)):
        assert torch.equal(fresh(x), model(x))


def test_save_accepts_both_orders(tmp_path, checkpoint):
    model, _ = checkpoint
    sk.save(tmp_path / "swapped.pt", model)
    assert torch.equal(sk.load(tmp_path / "swapped.pt", CNN()).c1.weight, model.c1.weight)


def test_whole_model_pickle_is_refused_without_weights_only_advice(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(CNN(), path)
    with pytest.raises(ValueError, match="pickled Python objects") as info:
        sk.load(path, CNN())
    assert "weights_only=False" not in str(info.value)


@pytest.mark.parametrize("content", [b"", b"\x8f\x02garbage" * 50], ids=["empty", "random"])
def test_unreadable_files_get_one_clear_error(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a readable slimkit checkpoint"):
        sk.load(path, CNN())


def test_truncated_checkpoint_is_refused(tmp_path, checkpoint):
    _, path = checkpoint
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable slimkit checkpoint"):
        sk.load(cut, CNN())


def test_missing_file_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        sk.load(tmp_path / "nope.pt", CNN())


def test_different_architecture_names_the_saved_one(checkpoint):
    _, path = checkpoint
    with pytest.raises(ValueError, match=r"does not fit MLP.*magnitude-pruning.*\(CNN\)"):
        sk.load(path, MLP())


def test_wrong_argument_types_are_named():
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        sk.load("a.pt", "b.pt")
