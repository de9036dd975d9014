"""``slimkit check-sparsity``: the N:M checker, contributed to the CLI by magnitude pruning.

Example:
    $ slimkit check-sparsity model.onnx --pattern 2:4
"""

from __future__ import annotations

import sys

import click
from rich.console import Console


class _BadInput(click.ClickException):
    exit_code = 2


@click.command("check-sparsity")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--pattern", default="2:4", show_default=True, help="N:M pattern to check.")
def check_sparsity_command(path, pattern) -> None:
    """Check that every Conv/Gemm/MatMul weight of an ONNX file keeps at most N of every M
    inputs non-zero. Exit 0: every checked weight satisfies it; 1: some weight violates it
    (or none could be checked); 2: bad input."""
    from slimkit.techniques.pruning.nm import check_sparsity as check

    try:
        result = check(path, pattern)
    except (FileNotFoundError, ValueError) as e:
        raise _BadInput(str(e)) from e
    console = Console()
    console.print(result.table())
    bad = [w.name for w in result.checked if w.status != "ok"]
    if not result.checked:
        console.print(f"no weight could be checked against {result.pattern}")
        sys.exit(1)
    if bad:
        console.print(f"{len(bad)} of {len(result.checked)} weight(s) violate {result.pattern}")
        sys.exit(1)
    console.print(f"all {len(result.checked)} checked weight(s) satisfy {result.pattern}")
