"""The MPNAS benchmark (benchmarks/mpnas_quality.py) in its smoke mode: a few steps of every method on
the five-domain suite. It runs end to end and writes every row; the tables in docs/mpnas.md come from
its full runs (commands there)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mpnas_quality  # noqa: E402


def test_mpnas_quality_smoke(benchmark, tmp_path: Path) -> None:
    out, raw = tmp_path / "mpnas.md", tmp_path / "mpnas.json"
    argv = ["--smoke", "--seeds", "0", "--out", str(out), "--json", str(raw)]
    benchmark.pedantic(lambda: mpnas_quality.main(argv), rounds=1, iterations=1)
    text = out.read_text()
    for row in ("| independent |", "| single-path multi-head |", "| multi-head search |", "| MPNAS equal |",
                "| MPNAS ABDP |", "| params <= 35% of independent |", "Jaccard similarity"):
        assert row in text, row
    assert set(json.loads(raw.read_text())) >= {"meta", "results"}
