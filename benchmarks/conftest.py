"""Benchmarks live in ``bench_*.py`` files, outside the default test run (``testpaths = ["tests"]``).

``pytest benchmarks --benchmark-enable`` runs them; for a quick CI pass add
``--benchmark-min-rounds=3 --benchmark-max-time=0.05 --benchmark-warmup=off``. Nothing here asserts a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def pytest_collect_file(file_path: Path, parent: Any) -> pytest.Module | None:
    """Collect ``bench_*.py`` as test modules (pytest itself only looks at ``test_*.py``)."""
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
