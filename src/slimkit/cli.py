"""The ``slimkit`` command: a thin layer over the library.

Exit codes: 0 success; 1 the command ran and failed; 2 bad input (usage, missing file,
invalid value).

Example:
    $ slimkit demo                # or: slimkit demo --quick (a smoke test: 5 + 3 epochs)
    $ slimkit techniques
    $ slimkit report model.onnx --batch-size 32 --json report.json
    $ slimkit check-sparsity model.onnx --pattern 2:4     # contributed by magnitude pruning
    $ slimkit run --example pcqat --out runs/pcqat      # or: slimkit run my-recipe.yaml
    $ slimkit optimize --example optimize-digits --out runs/optimize   # sk.optimize
"""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.table import Table


class _BadInput(click.ClickException):
    exit_code = 2


class _Commands(click.Group):
    """The built-in commands plus those every registered technique contributes
    (``Technique.cli_commands``, e.g. magnitude pruning's ``check-sparsity``)."""

    def _technique_commands(self) -> dict:
        if not hasattr(self, "_contributed"):
            from slimkit.core.registry import techniques

            self._contributed = {}
            for tech in techniques():
                for cmd in tech.cli_commands():
                    if cmd.name in self.commands or cmd.name in self._contributed:
                        continue  # a built-in name wins; the first technique keeps a name
                    self._contributed[cmd.name] = cmd
        return self._contributed

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self._technique_commands()))

    def get_command(self, ctx, name):
        return super().get_command(ctx, name) or self._technique_commands().get(name)


def _example_recipes() -> str:
    from slimkit.recipes import examples

    return ", ".join(examples())


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="slimkit")
def main() -> None:
    """slimkit: make trained PyTorch models smaller and faster, and prove it."""


@main.command()
@click.option("--epochs", type=int, default=None,
              help="Baseline training epochs.  [default: 20; 5 with --quick]")
@click.option("--finetune-epochs", type=int, default=None,
              help="Pruning fine-tune epochs.  [default: 10; 3 with --quick]")
@click.option("--sparsity", default=0.8, show_default=True, help="Final sparsity, in [0, 1).")
@click.option("--seed", default=0, show_default=True, help="Seed of init and data order.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Keep the ONNX files and demo.json in this folder.")
@click.option("--quick", is_flag=True,
              help="A smoke test: 5 baseline and 3 pruning epochs and 20 timed runs instead of "
                   "20, 10 and 100 (10-50 s on 2 cores, depending on load).")
def demo(epochs, finetune_epochs, sparsity, seed, out, quick) -> None:
    """Train the digits CNN, prune it to 80%, export both to ONNX and compare their reports."""
    from slimkit.demo import run_demo

    try:
        run_demo(out, epochs=epochs, finetune_epochs=finetune_epochs, sparsity=sparsity, seed=seed,
                 quick=quick)
    except ValueError as e:
        raise _BadInput(str(e)) from e


@main.command()
def techniques() -> None:
    """List the registered techniques, built-in and contributed."""
    import slimkit as sk

    table = Table(title="slimkit techniques", title_justify="left")
    # Three columns, config class and source under the description: readable in an
    # 80-column terminal, where five columns squeezed the description to a word per line.
    table.add_column("name", no_wrap=True)
    table.add_column("family", no_wrap=True)
    table.add_column("description (config class, source)", ratio=1)
    for t in sk.techniques():
        table.add_row(t.name, t.family,
                      f"{t.description}\n[dim]{t.config_cls.__name__}, {t.source}[/dim]")
    Console().print(table)


@main.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--batch-size", default=1, show_default=True, help="Batch size for latency.")
@click.option("--threads", default=2, show_default=True, help="ONNX Runtime intra-op threads.")
@click.option("--runs", default=100, show_default=True, help="Timed runs (0: skip latency).")
@click.option("--no-memory", is_flag=True, help="Skip the peak-memory probe.")
@click.option("--layers", is_flag=True, help="Also print one row per weight tensor.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the report as JSON here.")
def report(path, batch_size, threads, runs, no_memory, layers, json_path) -> None:
    """Deployment report of an ONNX file: sizes, sparsity, unique values, entropy bound, latency."""
    import slimkit as sk

    try:
        rep = sk.report(path, batch_size=batch_size, threads=threads, latency_runs=runs,
                        memory=not no_memory)
    except (FileNotFoundError, ValueError) as e:
        raise _BadInput(str(e)) from e
    console = Console()
    console.print(rep.table())
    if layers:
        console.print(rep.layers_table())
    if json_path:
        rep.to_json(json_path)


@main.command()
@click.argument("recipe", required=False, type=click.Path(dir_okay=False))
@click.option("--example", default=None,
              help="Run a shipped example recipe instead of a file (slimkit run --list-examples "
                   "names them).")
@click.option("--list-examples", is_flag=True, help="List the shipped example recipes and exit.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder: checkpoints, stages/, model.onnx, report.json, report.md, "
                   "plots. A folder holding checkpoints of the same run resumes from the last "
                   "one.  [default: runs/<recipe name>]")
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help="Short run: at most N optimizer steps per training phase; config values "
                   "written in epochs shrink to fit (for tests and trials).")
@click.option("--check", is_flag=True, help="Validate the recipe and print its plan; run nothing.")
def run(recipe, example, list_examples, out, max_steps, check) -> None:
    """Run a YAML recipe: its stages of techniques in order, a checkpoint after each, then the
    ONNX artifact, report.json, report.md and plots (see docs/recipes.md). Exit 0: done;
    1: the run failed; 2: bad recipe or options (every problem of a recipe is listed)."""
    if list_examples:
        click.echo(_example_recipes())
        return
    from slimkit.recipes import RecipeError
    from slimkit.recipes.command import run_command

    try:
        run_command(recipe, example, out, max_steps, check)
    except RecipeError as e:
        raise _BadInput(str(e)) from e


@main.command()
@click.argument("recipe", required=False, type=click.Path(dir_okay=False))
@click.option("--example", default=None,
              help="Run a shipped optimize recipe instead of a file (e.g. optimize-digits).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder: report.md, result.json, pareto.png, sensitivity.png, "
                   "model.onnx, stages.yaml and checkpoint.json (a rerun resumes from it).  "
                   "[default: runs/<recipe name>]")
def optimize(recipe, example, out) -> None:
    """Search per-layer settings for the smallest (or fastest) model within a metric budget:
    a recipe with a search: section (see docs/search/guide.md). Exit 0: done; 1: the search
    failed (e.g. no candidate meets the budget); 2: bad recipe or options."""
    from slimkit.recipes import RecipeError
    from slimkit.search import SearchError
    from slimkit.search.recipe import example_path, examples, run_optimize_recipe

    if (recipe is None) == (example is None):
        raise _BadInput(f"give a recipe file or --example NAME (one of {', '.join(examples())}),"
                        " not both or neither")
    try:
        path = example_path(example) if example is not None else recipe
        run_optimize_recipe(path, out)
    except RecipeError as e:
        raise _BadInput(str(e)) from e
    except SearchError as e:
        raise click.ClickException(str(e)) from e
    except ValueError as e:
        if example is not None and "unknown optimize recipe" in str(e):
            raise _BadInput(str(e)) from e
        raise


@main.command("new-technique")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=".",
              show_default=True, help="Write the technique under this existing folder.")
def new_technique(name, directory) -> None:
    """Write a new technique NAME (e.g. my-noise): package (config, no-op parametrization,
    registration), its conformance test, docs pages and RFC files. Exit 2: bad NAME, missing
    folder or an existing file (nothing is written)."""
    from slimkit.scaffold import new_technique as write

    try:
        paths = write(name, directory)
    except (FileNotFoundError, ValueError) as e:
        raise _BadInput(str(e)) from e
    console = Console()
    for path in paths:
        console.print(f"wrote {path}")
    package = name.replace("-", "_")
    console.print(f"next: PYTHONPATH={directory} python -m pytest "
                  f"{directory}/tests/test_{package}_conformance.py", highlight=False)
    import importlib.util

    if importlib.util.find_spec("pytest") is None:
        # The base install has no pytest; the "test" extra brings it.
        console.print("(that needs pytest, which is not installed: "
                      "pip install 'slimkit[test]' adds it)", highlight=False, markup=False)


@main.command()
@click.option("--entries", "source", default=None,
              help="A Python file or module:attribute holding a list of ConformanceEntry "
                   "(default: the built-in techniques).")
@click.option("--check", "checks", multiple=True,
              help="Run only this check (repeatable); default: all.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write every result as JSON here.")
def conformance(source, checks, json_path) -> None:
    """Run the conformance kit and print a pass table (technique x check). Exit 0: every
    check passed or failed as declared; 1: some check failed; 2: bad input."""
    from slimkit.testing.command import run_command

    try:
        ok = run_command(source, list(checks) or None, json_path)
    except (FileNotFoundError, ValueError) as e:
        raise _BadInput(str(e)) from e
    if not ok:
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
