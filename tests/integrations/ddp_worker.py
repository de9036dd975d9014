"""One rank of the DDP test (tests/integrations/test_ddp.py), launched by ``torchrun``.

Every rank trains the same prepared DigitsCNN under DistributedDataParallel (gloo, CPU) on
its own shard of the digits data, then gathers every parameter and buffer from all ranks and
lists those that are not ``torch.equal`` everywhere. Each rank writes what it found to
``<out>/rank<r>.json``; the test asserts on those files.

Usage: torchrun --standalone --nproc_per_node 2 ddp_worker.py OUT_DIR
"""

from __future__ import annotations

import copy
import json
import os
import sys
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import slimkit as sk
from slimkit.examples import DigitsCNN, load_digits_data, set_seed
from slimkit.integrations.distributed import (
    DistributedScheduler,
    sync_observers,
    sync_slimkit_state,
    unsynced_tensors,
    unused_parameters,
)

STEPS = 8
BATCH = 16
# Masks change during training (steps 2, 4, 6).
PRUNE = sk.MagnitudePruningConfig(sk.PolynomialDecay(0.0, 0.6, begin_step=0, end_step=6,
                                                     frequency=2))


def prepared(kind: str, freeze: int | None) -> torch.nn.Module:
    set_seed(0)  # the same initial model on every rank (DDP would broadcast rank 0's anyway)
    model = DigitsCNN()
    if kind == "prune":
        sk.prune(model, PRUNE)
    elif kind == "cluster_refresh":  # labels re-assigned at steps 2, 4, 6, 8
        sk.cluster(model, sk.ClusteringConfig(clusters=8, refresh_every=2))
    else:  # no refresh: no gradient reaches the weights under the centroids
        sk.cluster(model, sk.ClusteringConfig(clusters=8))
    sk.quantize(model, sk.QATConfig(freeze_observers_step=freeze))
    return model


def gathered_mismatches(model: torch.nn.Module) -> list[str]:
    """Names of the parameters and buffers that differ on some rank (torch.equal)."""
    mine = {n: t.detach().clone() for n, t in [*model.named_parameters(), *model.named_buffers()]}
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return sorted(n for n in mine if not all(torch.equal(mine[n], other[n]) for other in everyone))


def train(kind: str, scheduler_cls, x, y, freeze: int | None = None, **ddp_kwargs) -> dict:
    model = prepared(kind, freeze)
    ddp = DDP(model, **ddp_kwargs)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = scheduler_cls(model)
    model.train()
    for i in range(STEPS):
        xb, yb = x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH]
        loss = F.cross_entropy(ddp(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        scheduler.step()
    from slimkit.integrations import training_stats

    stats = training_stats(model)
    mismatched = gathered_mismatches(model)
    return {
        "mismatched": mismatched,
        # torch.equal is False for NaN: name non-finite tensors so a failure says which it is.
        "nonfinite": sorted(n for n, t in [*model.named_parameters(), *model.named_buffers()]
                            if t.is_floating_point() and not bool(torch.isfinite(t).all())),
        "unsynced": unsynced_tensors(model, everything=True),
        "unused": unused_parameters(model),
        "tensors": len(list(model.named_parameters())) + len(list(model.named_buffers())),
        "step_count": scheduler.step_count,
        "steps": [int(b) for n, b in model.named_buffers() if n.endswith(".step")],
        "sparsity": stats.get("slimkit/sparsity"),
        "clusters": stats.get("slimkit/clusters"),
        "observers_frozen": stats["slimkit/observers_frozen"],
        "observers": stats["slimkit/observers"],
    }


def calibration_check(x_shard, x_all) -> dict:
    """Static PTQ (minmax) calibrated per shard, then reduced, equals calibrating on all data."""
    cfg = sk.QuantizationConfig(observer="minmax")
    set_seed(0)
    sharded = sk.quantize(DigitsCNN(), cfg, calibration=x_shard)
    sync_observers(sharded)
    set_seed(0)
    whole = sk.quantize(DigitsCNN(), cfg, calibration=x_all)
    ranges = [(n, b) for n, b in sharded.named_buffers() if n.endswith((".lo", ".hi"))]
    ref = dict(whole.named_buffers())
    return {
        "ranges": len(ranges),
        "differ_from_whole": [n for n, b in ranges if not torch.equal(b, ref[n])],
        "mismatched": gathered_mismatches(sharded),
    }


def ema_check(rank: int, world: int, x_all) -> dict:
    """One QAT forward per rank on its own data, then sync_observers, equals one forward of a
    single process on the union (the moving-average update of the first quantizer, which sees
    the raw inputs)."""
    # Shard r scaled and shifted, so the ranks' extremes differ.
    shards = [x_all[r::world][:BATCH] * (1 + r) - 0.5 * r for r in range(world)]
    set_seed(0)
    model = sk.quantize(DigitsCNN(), sk.QATConfig(), calibration=x_all[:32])  # same start
    single = copy.deepcopy(model)
    start = model.conv1.sk_input_quant.lo.clone(), model.conv1.sk_input_quant.hi.clone()
    model.train()
    model(shards[rank])
    sync_observers(model)
    single.train()
    single(torch.cat(shards))
    a, b = model.conv1.sk_input_quant, single.conv1.sk_input_quant
    return {"equal": torch.equal(a.lo, b.lo) and torch.equal(a.hi, b.hi),
            "moved": not (torch.equal(a.lo, start[0]) or torch.equal(a.hi, start[1])),
            "mismatched": gathered_mismatches(model)}


def broadcast_check(rank: int, x) -> dict:
    """Ranks prepared apart (different weights, masks, ranges), then sync_slimkit_state."""
    set_seed(rank)
    model = sk.prune(DigitsCNN(), sk.MagnitudePruningConfig(0.5))
    sk.quantize(model, sk.QATConfig())
    model.train()
    model(x[:BATCH])  # the observers take their first range from this rank's batch
    before = unsynced_tensors(model)
    sync_slimkit_state(model)
    return {"before": before, "after": unsynced_tensors(model),
            "everything_after": unsynced_tensors(model, everything=True)}


def main() -> None:
    out = sys.argv[1]
    # DDP notes that a (1, 3, 3) kernel's gradient has another (equivalent) stride layout.
    warnings.filterwarnings("ignore", message="Grad strides do not match")
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    data = load_digits_data()
    # Each rank its own shard: rank r takes samples r, r + world, ...
    x, y = data.x_train[rank::world], data.y_train[rank::world]
    result = {
        "world": world,
        # Observers never frozen: they see every rank's data up to the last step.
        "plain": train("prune", sk.Scheduler, x, y),
        "synced": train("prune", DistributedScheduler, x, y),
        # DDP no longer broadcasts buffers at each forward; observers freeze at step 6 of 8.
        "synced_no_forward_sync": train("prune", DistributedScheduler, x, y, freeze=6,
                                        forward_sync_buffers=False),
        "cluster_refresh": train("cluster_refresh", DistributedScheduler, x, y, freeze=6),
        "cluster_static_graph": train("cluster", DistributedScheduler, x, y, static_graph=True),
        "calibration": calibration_check(x[:50], data.x_train[:100]),
        "broadcast": broadcast_check(rank, x),
        "ema": ema_check(rank, world, data.x_train),
    }
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
