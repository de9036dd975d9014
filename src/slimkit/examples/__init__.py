"""Built-in data and models for demos, tests and benchmarks (all offline)."""

from slimkit.examples.digits import (
    DigitsCNN,
    DigitsData,
    accuracy_eval,
    evaluate,
    load_digits_data,
    optimizer_step,
    set_seed,
    steps_per_epoch,
    train,
    train_with,
)

__all__ = [
    "DigitsCNN",
    "DigitsData",
    "accuracy_eval",
    "evaluate",
    "load_digits_data",
    "optimizer_step",
    "set_seed",
    "steps_per_epoch",
    "train",
    "train_with",
]
