"""Every built-in technique through the conformance kit: one parametrized test per
(technique, check, zoo model), e.g. ``magnitude-pruning-strip-lstm``.

Docs pages are looked up from the repository root, wherever pytest was started.
"""

import dataclasses
from pathlib import Path

import pytest

from slimkit.testing import conformance_tests
from slimkit.testing.builtin import BUILTIN_ENTRIES

ROOT = Path(__file__).resolve().parents[2]

ENTRIES = [dataclasses.replace(e, docs=ROOT / "docs" / "techniques" / "{technique}")
           for e in BUILTIN_ENTRIES]

# About 170 checks, a minute or two: CI runs them; `pytest -m "not slow"` skips them locally.
pytestmark = pytest.mark.slow

globals().update(conformance_tests(ENTRIES))
