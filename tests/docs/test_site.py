"""Build the documentation site with `mkdocs build --strict`: every page, link, snippet and
API reference must resolve (a warning fails the build)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """Build once for the module: (site directory, the finished mkdocs process)."""
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python", "mkdocs_jupyter"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            pytest.skip(f"{module} is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    # cwd is the repository root: pymdownx.snippets resolves `--8<--` paths from there.
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
         "-d", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    return out, proc


@pytest.fixture
def site(build):
    out, proc = build
    # The full log is in test_site_builds_strict; a failed build is not re-run per test.
    assert proc.returncode == 0, "mkdocs build --strict failed (see test_site_builds_strict)"
    return out


def test_site_builds_strict(build):
    site, proc = build
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    assert (site / "index.html").is_file()
    assert (site / "get-started" / "index.html").is_file()


def test_api_reference_is_rendered_from_docstrings(site):
    import slimkit

    api = site / "api"
    html = (api / "index.html").read_text(encoding="utf-8")
    everything = "".join(p.read_text(encoding="utf-8") for p in api.rglob("*.html"))
    # Every public name has its entry (on the slimkit page, or on its subpackage page when
    # it shares its name with its module), and the summary line of a docstring (up to its
    # first inline code, which the HTML wraps in tags) appears as the source states it.
    for name in slimkit.__all__:
        if name != "__version__":
            assert f'id="slimkit.{name}"' in html or re.search(
                rf'id="slimkit\.[\w.]+\.{name}"', everything), name
    summary = slimkit.export_onnx.__doc__.strip().splitlines()[0].split("`")[0].strip()
    assert summary and summary in html
    pruning = (site / "api" / "pruning" / "index.html").read_text(encoding="utf-8")
    assert "MagnitudePruningConfig" in pruning
    assert ":func:`" not in pruning and ":class:`" not in pruning   # roles rewritten
    # "Example:" sections render as console code (prompt span), not as nested quotes.
    assert '<span class="gp">&gt;&gt;&gt; </span>' in pruning
    assert "<blockquote>\n<blockquote>" not in everything


# API page -> the module it documents.
SUBPACKAGES = {
    "pruning": "slimkit.techniques.pruning",
    "channel_pruning": "slimkit.techniques.channel_pruning",
    "clustering": "slimkit.techniques.clustering",
    "quantization": "slimkit.techniques.quantization",
    "authoring": "slimkit.authoring",
    "storage": "slimkit.storage",
    **{name: f"slimkit.{name}" for name in
       ("export", "metrics", "core", "recipes", "integrations", "testing", "search")},
}


@pytest.mark.parametrize("name", sorted(SUBPACKAGES))
def test_api_page_lists_the_subpackage_all(site, name):
    module = importlib.import_module(SUBPACKAGES[name])
    html = (site / "api" / name / "index.html").read_text(encoding="utf-8")
    dotted = re.escape(SUBPACKAGES[name])
    missing = [n for n in module.__all__
               if not re.search(rf'id="{dotted}(\.[\w.]+)?\.{n}"', html)]
    assert not missing, f"{SUBPACKAGES[name]}: no API entry for {missing}"


def test_technique_pages_and_notebooks_are_in_the_site(site):
    for name in ("magnitude-pruning", "channel-pruning", "weight-clustering", "quantization", "qat"):
        for page in ("overview", "guide", "notebook"):
            assert (site / "techniques" / name / page / "index.html").is_file(), (name, page)
        # The notebook is offered as a download too, with a button on its page.
        assert (site / "techniques" / name / "notebook" / "notebook.ipynb").is_file(), name
        page = (site / "techniques" / name / "notebook" / "index.html").read_text(encoding="utf-8")
        assert '<a href="notebook.ipynb" title="Download the notebook"' in page, name
