"""The SlimDA benchmarks (benchmarks/slimda_quality.py, slimda_upem_rules.py) in a quick mode: one seed,
20 steps. They run end to end and report every budget and every scoring rule; the tables in
docs/slimda.md come from their full runs (commands there)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slimda_quality  # noqa: E402
import slimda_upem_rules  # noqa: E402


def test_slimda_quality_quick(benchmark, tmp_path: Path) -> None:
    out = tmp_path / "slimda.md"
    args = ["--seeds", "0", "--steps", "20", "--source", "300", "--candidates", "4", "--cost-rounds", "2",
            "--out", str(out)]
    benchmark.pedantic(lambda: slimda_quality.main(args), rounds=1, iterations=1)
    text = out.read_text()
    for budget in slimda_quality.BUDGETS:
        assert f"| {budget:g} | " in text, budget
    raw = json.loads(out.with_suffix(".json").read_text())
    assert [r["method"] for r in raw["runs"]] == list(slimda_quality.METHODS)
    for run in raw["runs"]:
        for budget, v in run["budgets"].items():  # each pick within its budget, never above the oracle
            assert 0 <= v["upem_pick"] <= v["oracle"] <= 1 and v["flops_ratio"] <= float(budget) + 1e-9
    assert out.with_suffix(".png").stat().st_size > 1000


def test_slimda_upem_rules_quick(benchmark, capsys: pytest.CaptureFixture[str]) -> None:
    benchmark.pedantic(lambda: slimda_upem_rules.main(["--seeds", "0", "--steps", "20"]), rounds=1, iterations=1)
    lines = capsys.readouterr().out.splitlines()
    for rule in slimda_upem_rules.RULES:
        assert any(line.startswith(f"| {rule} |") for line in lines), rule
