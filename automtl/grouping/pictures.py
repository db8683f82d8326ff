"""Pictures for task grouping, written as PNG files with matplotlib's Agg canvas (no pyplot state).

* :func:`selection_picture` — one block of rows per budget, one row per chosen network, one column per
  task: a cell is filled where the network serves the task (dark where the task is read from it), with the
  loss written in it;
* :func:`affinity_picture` — a task-affinity matrix (``Z[i][j]``: how a step on task i changes task j's loss,
  as TAG measures it) as an annotated heatmap centred on 0.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .table import GroupingError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .select import Selection

DPI = 120
READ_COLOUR = "#3b75af"  # the task is read from this network
SERVED_COLOUR = "#b9d1ea"  # the network serves the task, another chosen network serves it better
EMPTY_COLOUR = "#f2f2f2"


def _figure(size: tuple[float, float]) -> Figure:
    """A pyplot-free figure on an Agg canvas; ImportError naming the extra when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("automtl.grouping.pictures needs matplotlib: pip install 'automtl[data]'") from exc
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=fig.dpi)
    return out


def selection_picture(selections: Sequence[Selection], path: str | os.PathLike, title: str | None = None) -> Path:
    """Draw which tasks each chosen network serves, per budget (one block per selection); returns the path."""
    from matplotlib.patches import Rectangle

    if not selections:
        raise GroupingError("selection_picture: no selections to draw; pass select(...) results, one per budget")
    tasks = selections[0].tasks
    for sel in selections[1:]:
        if sel.tasks != tasks:
            raise GroupingError(
                f"selection_picture: budget {sel.budget:g} selects over tasks {', '.join(sel.tasks)}, "
                f"the first over {', '.join(tasks)}; draw one table's selections together"
            )
    rows: list[tuple[Any, ...]] = []  # (y, selection, network) from the top
    gaps: list[tuple[float, Selection]] = []
    y = 0.0
    for sel in selections:
        gaps.append((y, sel))
        y += 0.9  # heading line of the block
        for net in sel.networks:
            rows.append((y, sel, net))
            y += 1.0
        y += 0.4
    n_tasks = len(tasks)
    label_w = max([len(net.label()) for _, _, net in rows] + [12])
    width = min(22.0, 1.6 + 0.085 * label_w + 0.95 * n_tasks)
    height = min(30.0, 0.9 + 0.32 * y)
    fig = _figure((width, height))
    ax = fig.add_subplot()
    for top, sel, net in rows:
        for col, task in enumerate(tasks):
            if task in net.losses:
                colour = READ_COLOUR if sel.served_by[task] is net else SERVED_COLOUR
                text_colour = "white" if colour == READ_COLOUR else "black"
                ax.add_patch(Rectangle((col + 0.04, top + 0.06), 0.92, 0.88, color=colour, linewidth=0))
                ax.text(col + 0.5, top + 0.5, f"{net.losses[task]:.3g}", ha="center", va="center", fontsize=8,
                        color=text_colour)
            else:
                ax.add_patch(Rectangle((col + 0.04, top + 0.06), 0.92, 0.88, color=EMPTY_COLOUR, linewidth=0))
        ax.text(-0.1, top + 0.5, net.label() + ("  (HOA)" if net.estimated else ""), ha="right", va="center",
                fontsize=8)
    for top, sel in gaps:
        loss = f"loss {sel.loss:.4g}" + (" (test)" if sel.scored else "")
        ax.text(-0.1, top + 0.45, f"budget {sel.budget:g}: cost {sel.cost:g}, {loss}", ha="left", va="center",
                fontsize=9, fontweight="bold", transform=ax.transData)
    ax.set_xlim(0, n_tasks)
    ax.set_ylim(y, 0)
    ax.set_xticks([c + 0.5 for c in range(n_tasks)], list(tasks))
    ax.xaxis.tick_top()
    ax.set_yticks([])
    for side in ("left", "right", "bottom", "top"):
        ax.spines[side].set_visible(False)
    ax.tick_params(length=0)
    ax.set_title(title or "selected networks per budget (dark: the task is read from this network)", fontsize=10)
    return _save(fig, path)


def affinity_picture(
    matrix: Sequence[Sequence[float]], tasks: Sequence[str], path: str | os.PathLike, title: str | None = None
) -> Path:
    """Draw a task-affinity matrix (row i: the task stepped on, column j: the task whose loss changes)."""
    import numpy as np

    values = np.asarray(matrix, dtype=float)
    n = len(tasks)
    if values.shape != (n, n):
        raise GroupingError(f"affinity_picture: the matrix is {values.shape}, expected {n}x{n} for tasks "
                            f"{', '.join(tasks)}")
    if not np.isfinite(values).all():
        i, j = (int(v) for v in np.argwhere(~np.isfinite(values))[0])
        raise GroupingError(f"affinity_picture: affinity {tasks[i]} -> {tasks[j]} is {values[i, j]}, not finite")
    side = min(14.0, 2.2 + 0.75 * n)
    fig = _figure((side + 1.2, side))
    ax = fig.add_subplot()
    off_diag = values[~np.eye(n, dtype=bool)] if n > 1 else values.ravel()
    limit = float(np.abs(off_diag).max()) if off_diag.size else 0.0
    limit = limit if limit > 0 and math.isfinite(limit) else 1.0
    image = ax.imshow(values, cmap="RdBu", vmin=-limit, vmax=limit)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{values[i, j]:.2g}", ha="center", va="center", fontsize=8,
                    color="white" if abs(values[i, j]) > 0.6 * limit else "black")
    ax.set_xticks(range(n), list(tasks), rotation=45, ha="right")
    ax.set_yticks(range(n), list(tasks))
    ax.set_xlabel("task whose loss changes (j)")
    ax.set_ylabel("task stepped on (i)")
    fig.colorbar(image, ax=ax, shrink=0.8, label="affinity Z(i→j)")
    ax.set_title(title or "task affinity", fontsize=10)
    return _save(fig, path)
