"""The search-quality benchmark (benchmarks/quality.py) in its quick mode: it runs end to end and reports
every row. The full three-seed table is ``python benchmarks/quality.py --out docs/quality.md``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402


def test_quality_quick(benchmark, tmp_path: Path) -> None:
    out = tmp_path / "quality.md"
    benchmark.pedantic(lambda: quality.main(["--quick", "--out", str(out)]), rounds=1, iterations=1)
    text = out.read_text()
    for row in ("| independent |", "| all-shared |", "| half-shared |", "| searched |", "| random (all 2) |"):
        assert row in text, row
    assert "searched architecture" in text
