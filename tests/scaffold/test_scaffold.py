"""``slimkit new-technique``: the generated technique passes the conformance kit out of the
box, bad input writes nothing, and the RFC templates have one source."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from slimkit.cli import main
from slimkit.scaffold import generate, render, template_text

ROOT = Path(__file__).resolve().parents[2]
FILES = [
    "my_noise/__init__.py", "my_noise/config.py", "my_noise/handler.py",
    "tests/test_my_noise_conformance.py",
    "docs/techniques/my-noise/overview.md", "docs/techniques/my-noise/guide.md",
    "docs/techniques/my-noise/notebook.ipynb",
    "docs/rfcs/my-noise/proposal.md", "docs/rfcs/my-noise/design.md",
]


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.slow
def test_generated_technique_passes_the_conformance_kit(tmp_path):
    result = CliRunner().invoke(main, ["new-technique", "my-noise", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) \
        == sorted(FILES)
    # Installs nothing: the folder goes on PYTHONPATH; one thread keeps the shared machine fast.
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
         str(tmp_path), "tests/test_my_noise_conformance.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    summary = run.stdout.strip().splitlines()[-1]
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    # 12 checks: 4 per-entry ones, 6 per zoo model x 4 models, resume, convergence, metric
    # (skipped: the no-op claims none), docs.
    assert summary.startswith("29 passed, 1 skipped"), summary
    assert "failed" not in summary and "error" not in summary


def test_generated_code_is_filled_in_and_lints_clean(tmp_path):
    files = render("my-noise")
    assert sorted(files) == sorted(FILES)
    leftovers = [path for path, text in files.items() if "{{" in text or "}}" in text]
    assert leftovers == []
    assert "class MyNoiseConfig(Config)" in files["my_noise/config.py"]
    handler = files["my_noise/handler.py"]
    # Written against the author API: a Technique subclass with a stage of its own.
    assert "from slimkit.authoring import (" in handler
    assert "class MyNoiseTechnique(Technique):" in handler
    assert 'STAGE = register_stage("my-noise", 150)' in handler
    assert "TECHNIQUE = register(MyNoiseTechnique())" in handler
    generate.new_technique("my-noise", tmp_path)
    # Linted as the contributor's repository would: my_noise first-party, slimkit third-party.
    run = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--isolated", "--select",
         "E,F,W,I,B,UP,SIM", "--line-length", "100",
         "--config", 'lint.isort.known-first-party=["my_noise"]',
         "--config", 'lint.isort.known-third-party=["slimkit"]', str(tmp_path)],
        capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("name, message", [
    ("Bad_Name", "lowercase words joined by single hyphens"),
    ("my--noise", "lowercase words joined by single hyphens"),
    ("-noise", "lowercase words joined by single hyphens"),
    ("ab", "3-40 characters"),
    ("magnitude-pruning", "already registered"),
    ("class", "a Python keyword"),
    ("torch", "already an importable module"),
])
def test_bad_names_exit_2_and_write_nothing(tmp_path, name, message):
    result = CliRunner().invoke(main, ["new-technique", "--dir", str(tmp_path), "--", name])
    assert result.exit_code == 2
    assert message in result.output and "(NAME)" in result.output
    assert tree(tmp_path) == []


def test_existing_files_and_missing_folders_exit_2_and_write_nothing(tmp_path):
    (tmp_path / "docs" / "rfcs" / "my-noise").mkdir(parents=True)
    (tmp_path / "docs" / "rfcs" / "my-noise" / "design.md").write_text("mine\n")
    before = tree(tmp_path)
    result = CliRunner().invoke(main, ["new-technique", "my-noise", "--dir", str(tmp_path)])
    assert result.exit_code == 2 and "design.md already exist" in result.output
    assert tree(tmp_path) == before
    assert (tmp_path / "docs" / "rfcs" / "my-noise" / "design.md").read_text() == "mine\n"
    result = CliRunner().invoke(main, ["new-technique", "my-noise", "--dir",
                                       str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist (--dir)" in result.output


def test_a_failure_while_writing_removes_what_was_written(tmp_path, monkeypatch):
    (tmp_path / "docs").mkdir()  # an existing folder of the contributor's must survive
    real = generate.atomic_path
    calls = []

    def failing(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 6:
            raise OSError("disk full")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(generate, "atomic_path", failing)
    with pytest.raises(OSError, match="disk full"):
        generate.new_technique("my-noise", tmp_path)
    assert len(calls) == 6
    assert tree(tmp_path) == ["docs"]


@pytest.mark.parametrize("name", ["proposal.md", "design.md"])
def test_rfc_templates_have_one_source(name):
    # The scaffold copies the package-data templates; the docs show the same files.
    assert (ROOT / "docs" / "rfcs" / "templates" / name).read_text(encoding="utf-8") \
        == template_text(f"rfcs/{name}")
    rendered = render("my-noise")[f"docs/rfcs/my-noise/{name}"]
    assert "`my-noise`" in rendered and "My noise" in rendered
