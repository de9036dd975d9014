"""torchrun worker for test_plugin.py: the input-clip plugin trained on two gloo ranks.

Each rank calibrates and trains on its own shard with a DistributedScheduler, which all-reduces
the plugin's clip peaks by the plugin's own declared rule (max). Writes rank<N>.json.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import slimkit as sk
from slimkit.examples import DigitsCNN, load_digits_data
from slimkit.integrations import training_stats
from slimkit.integrations.distributed import DistributedScheduler, unsynced_tensors


def main():
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    from sk_clip_plugin import InputClipConfig

    data = load_digits_data()
    torch.manual_seed(0)
    model = DigitsCNN()
    sk.apply(model, InputClipConfig())
    shard = data.x_train[rank * 64:(rank + 1) * 64] * (1.0 + rank)  # ranks see other ranges
    ddp = DDP(model)
    scheduler = DistributedScheduler(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    y = data.y_train[rank * 64:(rank + 1) * 64]
    for i in range(4):
        xb, yb = shard[i * 16:(i + 1) * 16], y[i * 16:(i + 1) * 16]
        loss = torch.nn.functional.cross_entropy(ddp(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        scheduler.step()
    peaks = {n: float(m.peak) for n, m in model.named_modules() if hasattr(m, "peak")}
    mine = float(shard.abs().amax())
    (out / f"rank{rank}.json").write_text(json.dumps({
        "world": world, "peaks": peaks, "shard_max": mine,
        "unsynced": unsynced_tensors(model, everything=True),
        "stats": {k: v for k, v in training_stats(model).items()
                  if k.startswith("slimkit/clip")},
    }))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
