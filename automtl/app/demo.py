"""The demo (``automtl demo`` / ``make demo``): search, derive, and compare independent single-task
models, the all-shared model and the searched one.

By default on ColourCodes, a problem where sharing everything costs accuracy (the search has
something to find); ``--data synthetic_scenes`` runs segmentation, depth and normals on a zoo
backbone, where the tasks help each other and the search keeps them shared.

It is :func:`automtl.app.runs.run_search` on :func:`automtl.app.config.demo_config`: the same run directory
as ``automtl search``. Every model gets the same number of weight steps, so the comparison is
about the architecture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import demo_config
from .config.load import colour_codes_config
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
    images: int | None = None,
    warmup_steps: int | None = None,
    search_iterations: int | None = None,
    finetune_steps: int | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
    quiet: bool = False,
    data: str = "colour_codes",
) -> dict[str, Any]:
    """Run the demo, print the comparison table and write the run directory; returns the report.

    ``out_dir`` defaults to the first free ``runs/demo``, ``runs/demo-2``, ... ``quiet``
    silences progress (bars and stage lines), not the table.
    """
    if data == "colour_codes":  # the backbone, trunk and size flags belong to the SyntheticScenes demo
        cfg = colour_codes_config(seed=seed, **{k: v for k, v in (
            ("images", images), ("warmup_steps", warmup_steps), ("search_iterations", search_iterations),
            ("finetune_steps", finetune_steps)) if v is not None})
    elif data == "synthetic_scenes":
        cfg = demo_config(backbone=backbone, trunk_output=trunk_output, size=size, images=images or 500,
                          warmup_steps=60 if warmup_steps is None else warmup_steps,
                          search_iterations=40 if search_iterations is None else search_iterations,
                          finetune_steps=80 if finetune_steps is None else finetune_steps, seed=seed)
    else:
        raise ValueError(f"demo data must be 'colour_codes' or 'synthetic_scenes', not {data!r}")
    out = Path(out_dir) if out_dir is not None else free_run_dir()
    report = run_search(cfg, out, quiet=quiet, title="automtl demo", command="demo")
    assert report is not None  # no stop_after: the run finishes
    return report
