"""The demo (``automtl demo`` / ``make demo``): compile a zoo backbone, search on SyntheticScenes,
derive, and compare independent single-task models, the all-shared model and the searched one.

It is :func:`automtl.app.runs.run_search` on :func:`automtl.app.config.demo_config`: the same run directory
as ``automtl search``. Every model gets the same number of weight steps, so the comparison is
about the architecture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import demo_config
from .runs import run_search

__all__ = ["free_run_dir", "run_demo"]


def free_run_dir(base: str | Path = "runs/demo") -> Path:
    """``base`` when it is free (missing or empty), else the first free ``base-2``, ``base-3``, ..."""
    base = Path(base)
    for i in range(1, 10_000):
        path = base if i == 1 else base.with_name(f"{base.name}-{i}")
        if not path.exists() or (path.is_dir() and not any(path.iterdir())):
            return path
    raise ValueError(f"{base}: no free run directory name; pass --out")


def run_demo(
    backbone: str = "resnet18",
    trunk_output: str = "layer2",
    size: int = 32,
    images: int = 500,
    warmup_steps: int = 60,
    search_iterations: int = 40,
    finetune_steps: int = 80,
    out_dir: str | Path | None = None,
    seed: int = 0,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run the demo, print the comparison table and write the run directory; returns the report.

    ``out_dir`` defaults to the first free ``runs/demo``, ``runs/demo-2``, ... ``quiet``
    silences progress (bars and stage lines), not the table.
    """
    cfg = demo_config(backbone=backbone, trunk_output=trunk_output, size=size, images=images,
                      warmup_steps=warmup_steps, search_iterations=search_iterations,
                      finetune_steps=finetune_steps, seed=seed)
    out = Path(out_dir) if out_dir is not None else free_run_dir()
    report = run_search(cfg, out, quiet=quiet, title="automtl demo", command="demo")
    assert report is not None  # no stop_after: the run finishes
    return report
