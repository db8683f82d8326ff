"""Data benchmarks: rendering the built-in SyntheticScenes images (they are generated on every access)."""

from __future__ import annotations

import os

from automtl.train.data import SyntheticScenes

QUICK = os.environ.get("AUTOMTL_BENCH_QUICK") == "1"
SCENES = 30 if QUICK else 300


def test_scene_generation(benchmark) -> None:
    """Render SCENES 64x64 scenes with every target (was: 300 in under 6 s on this machine)."""
    benchmark.group = "data"
    ds = SyntheticScenes(SCENES, size=64, seed=0)

    def render() -> int:
        return sum(ds[i][0].shape[-1] for i in range(len(ds)))

    assert benchmark(render) == 64 * SCENES
    benchmark.extra_info["ms_per_scene"] = benchmark.stats.stats.median / SCENES * 1000
