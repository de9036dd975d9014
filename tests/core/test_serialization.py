import os

import pytest
import torch
import torch.nn as nn

import slimkit as sk
from tests.conftest import SubclassedNet, TiedLM


def test_save_load_round_trip_is_weights_only_and_exact(tmp_path, seeded):
    model = SubclassedNet()
    sk.prune(model, sk.MagnitudePruningConfig(sk.PolynomialDecay(0.0, 0.6, 0, 4, frequency=2)),
             ignore=["classifier.2"])
    sk.prune(model, sk.MagnitudePruningConfig(0.5, block_size=(1, 4)), targets=["classifier.2"])
    sched = sk.Scheduler(model)
    for _ in range(3):
        sched.step()
    path = tmp_path / "prepared.pt"
    sk.save(model, path, extra={"epoch": 3})
    payload = torch.load(path, weights_only=True)  # no pickled code needed
    assert [r["technique"] for r in payload["records"]] == ["magnitude-pruning"] * 2

    fresh = sk.load(path, model=SubclassedNet())
    assert fresh._slimkit_extra == {"epoch": 3}
    for (k, a), (k2, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    x = torch.randn(2, 4, 16)
    assert torch.equal(model(x), fresh(x))
    assert sk.Scheduler(fresh).step_count == 3


def test_tied_model_round_trips(tmp_path, seeded):
    model = TiedLM()
    sk.prune(model, sk.MagnitudePruningConfig(0.5))
    sk.save(model, tmp_path / "t.pt")
    fresh = sk.load(tmp_path / "t.pt", model=TiedLM())
    assert fresh.embed.parametrizations.weight[0] is fresh.head.parametrizations.weight[0]
    ids = torch.randint(0, 50, (2, 5))
    assert torch.equal(model(ids), fresh(ids))


def test_load_errors(tmp_path, seeded):
    model = nn.Linear(4, 4)
    sk.prune(model, sk.MagnitudePruningConfig(0.5))
    sk.save(model, tmp_path / "m.pt")
    with pytest.raises(ValueError, match="needs a fresh model"):
        sk.load(tmp_path / "m.pt", model=model)
    with pytest.raises(ValueError, match="does not fit Linear"):
        sk.load(tmp_path / "m.pt", model=nn.Linear(4, 5))
    torch.save({"a": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not a slimkit checkpoint"):
        sk.load(tmp_path / "other.pt", model=nn.Linear(4, 4))


def test_save_is_atomic(tmp_path, monkeypatch, seeded):
    model = nn.Linear(4, 4)
    sk.prune(model, sk.MagnitudePruningConfig(0.5))
    target = tmp_path / "m.pt"
    target.write_bytes(b"previous")

    def failing_save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        sk.save(model, target)
    assert target.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["m.pt"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sk.save(model, tmp_path / "missing" / "m.pt")
