"""The release artifacts: `python -m build` makes an sdist and a wheel that `twine check`
accepts, and the wheel installed into a fresh virtual environment runs `slimkit demo --quick`.

Slow (a fresh venv gets torch and the other dependencies: about a minute on 2 cores), so
marked `slow`: plain `pytest` (CI) runs it, `pytest -m "not slow"` skips it locally.

The dependencies come from a wheelhouse filled by `pip download` (the configured indexes,
with the repository's constraints, so torch stays the CPU build of 2.13.0) and kept between
runs in `$SLIMKIT_WHEELHOUSE` (default `~/.cache/slimkit/wheelhouse`); the venv itself is
new every time and does not see the test environment's packages.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

import slimkit

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(cmd, timeout, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                            timeout=timeout, **kw)
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", out, ROOT], timeout=600)
    wheels, sdists = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0]}


def _tracked_package_files() -> list[str]:
    """Files of the package as the repository tracks them (others' work in progress aside)."""
    listed = subprocess.run(["git", "ls-files", "src/slimkit"], cwd=ROOT, capture_output=True,
                            text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: cannot tell which package files are released")
    return [p.removeprefix("src/") for p in listed.stdout.split()]


def test_wheel_and_sdist_pass_twine_and_ship_every_package_file(dist):
    _run([sys.executable, "-m", "twine", "check", "--strict", dist["wheel"], dist["sdist"]],
         timeout=120)
    version = slimkit.__version__
    assert dist["wheel"].name == f"slimkit-{version}-py3-none-any.whl"
    assert dist["sdist"].name == f"slimkit-{version}.tar.gz"

    with zipfile.ZipFile(dist["wheel"]) as zf:
        names = set(zf.namelist())
        metadata = zf.read(f"slimkit-{version}.dist-info/METADATA").decode()
        entry_points = zf.read(f"slimkit-{version}.dist-info/entry_points.txt").decode()
    # Every tracked file of the package ships: modules and package data (recipe YAMLs,
    # scaffold templates) alike.
    missing = [p for p in _tracked_package_files() if p not in names]
    assert not missing, f"tracked package files missing from the wheel: {missing}"
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "docs/"))]

    assert f"Version: {version}" in metadata
    assert "Description-Content-Type: text/markdown" in metadata
    assert "License-Expression: Apache-2.0" in metadata
    assert "Requires-Dist: torch" in metadata
    assert "slimkit = slimkit.cli:main" in entry_points

    with tarfile.open(dist["sdist"]) as tf:
        sdist_names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for needed in ("README.md", "LICENSE", "pyproject.toml", "src/slimkit/__init__.py"):
        assert needed in sdist_names, needed


def _wheelhouse() -> Path:
    path = Path(os.environ.get("SLIMKIT_WHEELHOUSE",
                               Path.home() / ".cache" / "slimkit" / "wheelhouse"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_fresh_venv_installs_the_wheel_and_runs_demo_quick(dist, tmp_path):
    constraints = ROOT / "constraints.txt"
    house = _wheelhouse()
    # Fill the wheelhouse (a no-op for files already there), then install from it alone.
    _run([sys.executable, "-m", "pip", "download", "-q", "-d", house, "-c", constraints,
          dist["wheel"]], timeout=600)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    py, cli = env_dir / "bin" / "python", env_dir / "bin" / "slimkit"
    _run([py, "-m", "pip", "install", "-q", "--no-compile", "--no-index", "--find-links", house,
          "-c", constraints, dist["wheel"]], timeout=600)

    shown = _run([py, "-m", "pip", "show", "torch", "slimkit"], timeout=60).stdout
    assert "Version: 2.13.0+cpu" in shown, shown
    assert f"Version: {slimkit.__version__}" in shown
    # The venv is isolated: slimkit comes from the wheel, not from this checkout.
    where = _run([py, "-c", "import slimkit; print(slimkit.__file__)"], timeout=120,
                 cwd=tmp_path).stdout.strip()
    assert where.startswith(str(env_dir)), where

    out = tmp_path / "demo"
    env = {**os.environ, "COLUMNS": "200"}  # one line per message: rich wraps at the width
    env.pop("PYTHONPATH", None)
    result = _run([cli, "demo", "--quick", "--out", out], timeout=600, cwd=tmp_path, env=env)
    summary = json.loads((out / "demo.json").read_text())
    assert (out / "baseline.onnx").exists() and (out / "pruned.onnx").exists()
    assert summary["settings"]["quick"] is True
    assert summary["settings"]["epochs"] == 5 and summary["settings"]["finetune_epochs"] == 3

    acc_b = summary["baseline"]["metrics"]["accuracy"]
    acc_p = summary["pruned"]["metrics"]["accuracy"]
    # 5 + 3 epochs (seed 0) reach about 0.94 on the 360 test images (0.98 after 20 + 10).
    assert acc_b > 0.90 and acc_p > 0.90, (acc_b, acc_p)
    assert abs(summary["pruned"]["sparsity"] - 0.8) < 0.001  # per-layer 80%, rounded per layer
    assert summary["baseline"]["sparsity"] < 0.001
    # 80% zeros zip about 3.9x smaller than the dense fp32 file; the raw size is unchanged.
    assert 3.5 < summary["ratios"]["zipped_bytes"] < 4.5
    assert summary["baseline"]["raw_bytes"] == summary["pruned"]["raw_bytes"]

    # The summary line it prints carries the same numbers as demo.json.
    line = re.search(r"baseline ([0-9.]+), pruned ([0-9.]+) .*zipped ([0-9.]+)x smaller",
                     result.stdout)
    assert line, result.stdout[-2000:]
    assert float(line[1]) == pytest.approx(acc_b, abs=5e-5)
    assert float(line[2]) == pytest.approx(acc_p, abs=5e-5)
    assert float(line[3]) == pytest.approx(summary["ratios"]["zipped_bytes"], abs=5e-3)
