"""Pictures of a multi-path (MPNAS) architecture: each domain's path over the blocks, and their Jaccard matrix.

An architecture whose choices are ``block`` / ``zero`` (the ``block`` choice kind) says, per
domain, which searched blocks its path runs. :func:`block_paths_picture` draws one row per domain
and one column per block (network order), coloured by what the block is in the derived model:
*shared* (run by several domains, one set of weights), *specific* (run by this domain only) or
skipped (a zero block; a block every domain skips is dropped). :func:`block_jaccard_picture` draws
``J(a, b) = |Pa ∩ Pb| / |Pa ∪ Pb|`` of the domains' block sets. Blocks that are no choice (their
input and output shapes differ) are run by every path and left out of both pictures.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..model.architecture import Architecture
from .pictures import DPI, _figure, _save, training_curves

STATUS = ("shared", "specific", "skipped")
STATUS_COLOURS = {"shared": "#3b75af", "specific": "#ef8636", "skipped": "#d3d3d3"}


def is_block_architecture(architecture: Architecture) -> bool:
    """Whether ``architecture`` chooses block / zero per domain (an MPNAS search)."""
    return architecture.options.get("choice") in ("block", "domain_block")


def block_sets(architecture: Architecture) -> dict[str, list[str]]:
    """Each domain's searched blocks that its path runs (network order)."""
    return {t: [n for n, per in architecture.choices.items() if per[t] != "zero"] for t in architecture.tasks}


def block_grid(architecture: Architecture) -> tuple[list[str], list[list[str]]]:
    """The blocks, and per domain per block ``shared`` / ``specific`` / ``skipped``."""
    blocks = list(architecture.choices)
    rows = []
    for t in architecture.tasks:
        row = []
        for b in blocks:
            mine = architecture.choices[b][t]
            users = sum(per == mine for per in architecture.choices[b].values())  # the same bank (block or variant)
            row.append("skipped" if mine == "zero" else "shared" if users > 1 else "specific")
        rows.append(row)
    return blocks, rows


def block_status(architecture: Architecture) -> dict[str, str]:
    """Per searched block: ``shared`` (one bank, the block or a kernel variant, runs for several domains),
    ``specific`` (each domain running it has its own) or ``dropped`` (no domain runs it)."""
    blocks, grid = block_grid(architecture)
    cells = {b: [row[i] for row in grid] for i, b in enumerate(blocks)}
    return {b: "shared" if "shared" in c else "specific" if "specific" in c else "dropped" for b, c in cells.items()}


def block_jaccard(architecture: Architecture) -> list[list[float]]:
    """The Jaccard matrix of the domains' searched block sets (1 for two empty sets)."""
    sets = {t: set(p) for t, p in block_sets(architecture).items()}
    tasks = list(architecture.tasks)
    return [[len(sets[a] & sets[b]) / len(sets[a] | sets[b]) if sets[a] | sets[b] else 1.0 for b in tasks]
            for a in tasks]


def block_paths_picture(architecture: Architecture, path: str | os.PathLike, dpi: int = DPI) -> Path:
    """Draw each domain's path over the blocks, shared / specific / skipped coloured. Returns ``path``."""
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    blocks, rows = block_grid(architecture)
    if not blocks:
        raise ValueError("the architecture has no block choices to draw")
    tasks = list(architecture.tasks)
    grid = np.array([[STATUS.index(s) for s in row] for row in rows])
    fig = _figure((min(max(3 + 0.45 * len(blocks), 5.0), 22.0), 1.6 + 0.45 * len(tasks)), dpi)
    ax = fig.subplots()
    ax.imshow(grid, cmap=ListedColormap([STATUS_COLOURS[s] for s in STATUS]), vmin=-0.5, vmax=len(STATUS) - 0.5,
              aspect="auto", interpolation="nearest")
    ax.set_xticks(np.arange(-0.5, len(blocks)), minor=True)
    ax.set_yticks(np.arange(-0.5, len(tasks)), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.2)
    ax.tick_params(which="minor", length=0)
    ax.set_yticks(range(len(tasks)), tasks)
    ax.set_xticks(range(len(blocks)), blocks, rotation=60, ha="right", rotation_mode="anchor", fontsize=8)
    for spine in ax.spines.values():
        spine.set_visible(False)
    for j, t in enumerate(tasks):  # a kernel variant's name on its cells
        for i, b in enumerate(blocks):
            if architecture.choices[b][t] not in ("block", "zero"):
                ax.text(i, j, architecture.choices[b][t], ha="center", va="center", fontsize=7, color="white")
    dropped = sum(all(r[i] == "skipped" for r in rows) for i in range(len(blocks)))
    fig.legend(handles=[Patch(facecolor=STATUS_COLOURS[s], label=s) for s in STATUS], loc="outside lower center",
               ncols=3, frameon=False, fontsize=9)
    fig.suptitle(f"Domain paths: {len(tasks)} domains × {len(blocks)} searched blocks · {dropped} dropped",
                 fontsize=11)
    return _save(fig, path)


def block_jaccard_picture(architecture: Architecture, path: str | os.PathLike, dpi: int = DPI) -> Path:
    """Draw the Jaccard matrix of the domains' block sets as an annotated heatmap. Returns ``path``."""
    matrix = block_jaccard(architecture)
    tasks = list(architecture.tasks)
    n = len(tasks)
    side = min(max(2.0 + 0.75 * n, 4.5), 14.0)
    fig = _figure((side + 1.2, side), dpi)
    ax = fig.subplots()
    im = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), tasks, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center",
                  rotation_mode="anchor")
    ax.set_yticks(range(n), tasks)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{matrix[i][j]:.2f}", ha="center", va="center", fontsize=10,
                    color="white" if matrix[i][j] > 0.55 else "black")
    fig.colorbar(im, ax=ax, shrink=0.8, label="Jaccard index of the blocks run")
    ax.set_title(f"Domain similarity over {len(architecture.choices)} searched blocks", fontsize=11)
    return _save(fig, path)


def render_blocks(architecture: Architecture, out: Path, history: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """``paths.png``, ``jaccard.png`` (and ``curves.png`` when a history has losses) into ``out``."""
    paths = {"paths": block_paths_picture(architecture, out / "paths.png"),
             "jaccard": block_jaccard_picture(architecture, out / "jaccard.png")}
    if history:
        try:
            paths["curves"] = training_curves(history, out / "curves.png")
        except ValueError:  # a history without loss records draws no curves
            pass
    return paths
