"""DDP with torchrun: two gloo ranks on CPU, each on its own data shard (see ddp_worker.py).

One launch trains five prepared models (about 20 s on a busy 2-core machine); the tests
read what each rank found. ``--standalone`` makes torchrun pick a free port, and the
subprocess timeout keeps a hung collective from blocking CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

import slimkit as sk
from slimkit.examples import DigitsCNN
from slimkit.integrations.distributed import (
    DistributedScheduler,
    slimkit_tensors,
    sync_slimkit_state,
    unsynced_tensors,
    unused_parameters,
)

WORKER = Path(__file__).with_name("ddp_worker.py")
STEPS = 8  # as in ddp_worker.py

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with the gloo backend is not available")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(WORKER), str(out)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"torchrun did not finish in {e.timeout} s (a hung collective?)")
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


TRAINED = ["synced", "synced_no_forward_sync", "cluster_refresh", "cluster_static_graph"]


@pytest.mark.parametrize("case", TRAINED)
def test_every_parameter_and_buffer_identical_on_all_ranks(ranks, case):
    for rank in ranks:
        assert rank["world"] == 2
        r = rank[case]
        assert r["nonfinite"] == [], f"{case}: training produced non-finite values"
        assert r["tensors"] >= 40  # weights, biases, masks or centroids/labels, steps, ranges
        assert r["mismatched"] == [], f"{case}: differ across ranks (torch.equal)"
        assert r["unsynced"] == []  # the SHA-1 check of unsynced_tensors agrees
        assert r["step_count"] == STEPS
        assert r["steps"] and all(s == STEPS for s in r["steps"])


def test_without_sync_only_the_observer_ranges_diverge(ranks):
    # The negative control: a plain sk.Scheduler under DDP. Weights, masks and steps agree
    # (DDP all-reduces gradients; masks are computed from them deterministically), but the
    # ranges updated in the last forward pass come from each rank's own batch.
    for rank in ranks:
        mismatched = rank["plain"]["mismatched"]
        assert mismatched, "observer ranges were expected to differ without sync_observers"
        assert all(n.endswith((".lo", ".hi")) for n in mismatched), mismatched
        assert rank["plain"]["unsynced"] == mismatched
        assert rank["plain"]["step_count"] == STEPS


def test_pruning_and_qat_state_after_training(ranks):
    for rank in ranks:
        # PolynomialDecay(0 -> 0.6) reached at step 6; per layer rounding: within 1e-4.
        assert rank["synced"]["sparsity"] == pytest.approx(0.6, abs=1e-4)
        assert rank["synced"]["observers_frozen"] == 0  # freeze_observers_step=None
        assert rank["synced_no_forward_sync"]["observers_frozen"] == 5  # froze at step 6
        assert rank["cluster_refresh"]["clusters"] <= 8


def test_clustering_without_refresh_needs_static_graph(ranks):
    unused = ranks[0]["cluster_static_graph"]["unused"]
    assert unused == [f"{m}.parametrizations.weight.original" for m in
                      ("conv1", "conv2", "fc1", "fc2")]
    assert ranks[0]["cluster_refresh"]["unused"] == []


def test_calibration_shards_reduce_to_the_whole_calibration_set(ranks):
    # minmax observers: min/max of per-shard ranges == the range of the union, exactly.
    for rank in ranks:
        c = rank["calibration"]
        assert c["ranges"] == 10  # lo and hi of 5 quantizers
        assert c["differ_from_whole"] == []
        assert c["mismatched"] == []


def test_moving_average_sync_equals_one_process_on_the_union(ranks):
    # lo + c (min_k lo_k - lo) == min_k (lo + c (lo_k - lo)): exact, compared with torch.equal.
    for rank in ranks:
        assert rank["ema"]["moved"]  # both ends of the range moved in this step
        assert rank["ema"]["equal"]
        assert rank["ema"]["mismatched"] == []


def test_sync_slimkit_state_makes_separately_prepared_ranks_agree(ranks):
    for rank in ranks:
        b = rank["broadcast"]
        # Different seeds: every mask and observer range differed before the sync.
        assert {n.rsplit(".", 1)[-1] for n in b["before"]} >= {"mask", "lo", "hi"}
        assert b["after"] == []
        # Only slimkit's state is synchronised, not the weights (DDP's job).
        assert b["everything_after"] and all(
            n.endswith(("original", "bias")) for n in b["everything_after"])


def test_helpers_are_no_ops_outside_a_process_group():
    model = sk.prune(DigitsCNN(), sk.MagnitudePruningConfig(0.5))
    sk.quantize(model, sk.QATConfig())
    before = {n: t.clone() for n, t in slimkit_tensors(model).items()}
    sync_slimkit_state(model)
    assert unsynced_tensors(model, everything=True) == []
    scheduler = DistributedScheduler(model)
    scheduler.step()
    after = slimkit_tensors(model)
    assert set(after) == set(before)
    assert int(after["conv1.parametrizations.weight.0.step"]) == 1
    assert {n for n in after if n.endswith(".mask")} == {
        f"{m}.parametrizations.weight.0.mask" for m in ("conv1", "conv2", "fc1", "fc2")}
    assert unused_parameters(model) == []
