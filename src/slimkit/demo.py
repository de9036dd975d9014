"""``slimkit demo``: train the digits CNN, prune it to 80% while fine-tuning, deploy both.

The whole user path in one run: prepare -> train -> strip -> export -> report, on real data
that ships offline. Baseline and pruned model are exported to ONNX, validated in ONNX
Runtime, and their deployment reports are printed side by side with ratios.

``quick=True`` (``slimkit demo --quick``) trains for fewer epochs and times fewer inference
runs (5 baseline and 3 pruning epochs, 20 timed runs): the same path in 10-50 s on 2 cores
(41 s measured on a busy machine), a smoke test of an installation. Its accuracy is a
little lower and its timings rougher than the full run's.

Example:
    >>> from slimkit.demo import run_demo
    >>> result = run_demo(out_dir="demo-out")   # about 30 s on 2 cores
    >>> result["pruned"]["metrics"]["accuracy"]
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

from rich.console import Console

import slimkit as sk
from slimkit.examples import (
    DigitsCNN,
    accuracy_eval,
    load_digits_data,
    set_seed,
    steps_per_epoch,
    train,
)

# Settings of the full run and of ``--quick``: (baseline epochs, fine-tune epochs, timed
# latency runs, warm-up runs). Quick keeps the schedule's shape (ramp over 70% of the
# fine-tune epochs) so it exercises the same code, only shorter.
FULL = {"epochs": 20, "finetune_epochs": 10, "latency_runs": 100, "warmup": 10}
QUICK = {"epochs": 5, "finetune_epochs": 3, "latency_runs": 20, "warmup": 3}


def run_demo(
    out_dir: str | Path | None = None,
    *,
    epochs: int | None = None,
    finetune_epochs: int | None = None,
    sparsity: float = 0.8,
    seed: int = 0,
    quick: bool = False,
    console: Console | None = None,
) -> dict:
    """Run the demo; returns both reports as dicts, the ratios, the settings and the wall time.

    ``epochs`` / ``finetune_epochs`` default to 20 / 10 (5 / 3 with ``quick=True``); values
    given explicitly win over ``quick``.
    """
    console = console or Console()
    start = time.perf_counter()
    settings = dict(QUICK if quick else FULL)
    if epochs is not None:
        settings["epochs"] = epochs
    if finetune_epochs is not None:
        settings["finetune_epochs"] = finetune_epochs
    epochs, finetune_epochs = settings["epochs"], settings["finetune_epochs"]
    if finetune_epochs < 1 or epochs < 1:
        raise ValueError(f"epochs and finetune_epochs must be >= 1, got {epochs}, {finetune_epochs}")
    # Every setting is checked before training starts, not after it.
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r} (--sparsity)")
    set_seed(seed)
    data = load_digits_data()
    console.print(
        f"[bold]slimkit demo[/]: digits ({len(data.x_train)} train / {len(data.x_test)} test "
        f"8x8 images), CNN with {sum(p.numel() for p in DigitsCNN().parameters()):,} parameters"
    )

    model = DigitsCNN()
    train(model, data, epochs=epochs, lr=1e-3, seed=seed, progress=True,
          description=f"baseline: {epochs} epochs")
    baseline = copy.deepcopy(model)

    # Prune during fine-tuning: cubic ramp over the first 70% of the epochs, one mask update
    # per epoch (the schedule of ../shared/BENCHMARKS.md).
    spe = steps_per_epoch(data)
    ramp = max(1, round(0.7 * finetune_epochs)) * spe
    config = sk.MagnitudePruningConfig(
        sk.PolynomialDecay(0.0, sparsity, begin_step=0, end_step=ramp, frequency=spe)
    )
    sk.prune(model, config)
    train(model, data, epochs=finetune_epochs, lr=1e-4, seed=seed, scheduler=sk.Scheduler(model),
          progress=True, description=f"pruning to {sparsity:.0%}: {finetune_epochs} epochs")

    with tempfile.TemporaryDirectory(prefix="slimkit-demo-") as tmp:
        folder = Path(out_dir) if out_dir is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        x = data.x_test[:256]
        eval_fn = accuracy_eval(data)
        reports = {}
        for label, m in (("baseline", baseline), ("pruned", model)):
            path = sk.export_onnx(m, folder / f"{label}.onnx", example_inputs=x)
            reports[label] = sk.report(path, x, eval_fn=eval_fn, threads=2, name=label,
                                       latency_runs=settings["latency_runs"],
                                       warmup=settings["warmup"])
        console.print(reports["baseline"].compare_table(reports["pruned"],
                                                        names=("baseline fp32", "pruned")))
        wall = time.perf_counter() - start
        result = {
            "baseline": reports["baseline"].to_dict(),
            "pruned": reports["pruned"].to_dict(),
            "ratios": reports["baseline"].compare(reports["pruned"]),
            "settings": {**settings, "sparsity": sparsity, "seed": seed, "quick": quick},
            "wall_seconds": wall,
        }
        if out_dir is not None:
            import json

            (folder / "demo.json").write_text(json.dumps(result, indent=2))
            console.print(f"artifacts and demo.json written to {folder}")
    acc_b = result["baseline"]["metrics"]["accuracy"]
    acc_p = result["pruned"]["metrics"]["accuracy"]
    console.print(
        f"accuracy in ONNX Runtime: baseline {acc_b:.4f}, pruned {acc_p:.4f} "
        f"({100 * (acc_p - acc_b):+.2f} pts); zipped {result['ratios']['zipped_bytes']:.2f}x "
        f"smaller; wall time {wall:.1f} s"
    )
    return result
