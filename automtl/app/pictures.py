"""Pictures of a searched architecture and its training (DESIGN §7), written as PNG files.

* :func:`sharing_picture` — each task's path over the choice nodes, shared / specific / skip coloured;
* :func:`similarity_matrix` — the task-similarity (Jaccard) matrix as an annotated heatmap;
* :func:`training_curves` — per-task training and validation loss across the search stages;
* :func:`policy_picture` — how the policy moved: per node and task, the logit gap and the entropy
  over the policy steps (a search still undecided shows small gaps and high entropy at the end);
* :func:`render_all` — all of them into one folder.

Matplotlib (the ``data`` extra) is imported on first use and drawn with the non-interactive Agg
canvas; no pyplot state is touched, so drawing is safe alongside other matplotlib users.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..model.architecture import Architecture

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure

BRANCHES = ("shared", "specific", "skip")
COLOURS = {"shared": "#3b75af", "specific": "#ef8636", "skip": "#d3d3d3"}
ALL_SHARED_COLOUR = "#1b2f4a"
DPI = 120
STAGES = ("warmup", "search", "finetune")  # drawn first, in this order; other loss-bearing stages follow

_MIN_WIDTH, _MAX_WIDTH = 6.0, 22.0  # inches, sharing picture
_LABEL_PITCH = 0.16  # inches of column width one rotated node name needs


def _matplotlib() -> Any:
    """The matplotlib module, imported lazily with an actionable message when it is missing."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "automtl.app.pictures needs matplotlib (and numpy): install the data extra with "
            "pip install 'automtl[data]'"
        ) from exc
    return matplotlib


def _figure(size: tuple[float, float], dpi: int) -> Figure:
    """A pyplot-free figure on an Agg canvas with constrained layout."""
    _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=fig.dpi)  # no bbox_inches="tight": size is figsize x dpi
    return out


# --- architecture checks --------------------------------------------------------------------------


def _check(architecture: Architecture, order: Sequence[str] | None = None) -> list[str]:
    """The node order to draw; ValueError naming the node / task / branch that is wrong."""
    if not isinstance(architecture, Architecture):
        raise TypeError(f"expected an Architecture, got {type(architecture).__name__}")
    if not architecture.tasks:
        raise ValueError("architecture has no tasks: nothing to draw")
    if len(set(architecture.tasks)) != len(architecture.tasks):
        raise ValueError(f"architecture lists a task twice: {architecture.tasks}")
    if not architecture.choices:
        raise ValueError("architecture has no choice nodes: nothing to draw")
    for node, per_task in architecture.choices.items():
        if not isinstance(per_task, Mapping):
            raise ValueError(f"node {node!r}: expected a mapping task -> branch, got {type(per_task).__name__}")
        for task in architecture.tasks:
            if task not in per_task:
                raise ValueError(f"node {node!r} gives no branch for task {task!r}")
        for task, branch in per_task.items():
            if task not in architecture.tasks:
                raise ValueError(f"node {node!r} names task {task!r}, which is not one of {architecture.tasks}")
            if branch not in BRANCHES:
                raise ValueError(f"node {node!r}, task {task!r}: unknown branch {branch!r} "
                                 f"(branches are {', '.join(BRANCHES)})")
    if order is None:
        return list(architecture.choices)
    order = list(order)
    unknown = [n for n in order if n not in architecture.choices]
    if unknown:
        raise ValueError(f"order names nodes the architecture does not have: {unknown}")
    missing = [n for n in architecture.choices if n not in order]
    if missing or len(set(order)) != len(order):
        raise ValueError(f"order must list every choice node once; missing {missing}" if missing
                         else "order lists a node twice")
    return order


# --- sharing picture ------------------------------------------------------------------------------


def _sharing_size(n_nodes: int, n_tasks: int, longest: int) -> tuple[float, float]:
    """Figure size (inches): width grows with the node count within [6, 22], height with the tasks
    and with the longest (rotated) node name."""
    width = min(max(2.8 + 0.3 * n_nodes, _MIN_WIDTH), _MAX_WIDTH)
    height = 1.5 + 0.42 * (n_tasks + 0.7) + min(0.06 * longest, 1.8)
    return round(width, 2), round(min(height, 16.0), 2)


def _label_step(n_nodes: int, width: float) -> int:
    """Label every k-th node so neighbouring rotated names do not overlap."""
    column = max(width - 2.8, 1.0) / n_nodes
    return max(1, math.ceil(_LABEL_PITCH / column))


def sharing_picture(architecture: Architecture, path: str | os.PathLike, order: Sequence[str] | None = None,
                    title: str | None = None, dpi: int = DPI) -> Path:
    """Draw each task's path over the choice nodes (one row per task, one column per node, in
    network order) coloured by branch; a top strip marks the nodes every task shares. Returns ``path``."""
    nodes = _check(architecture, order)
    import numpy as np

    tasks = list(architecture.tasks)
    code = {b: i for i, b in enumerate(BRANCHES)}
    grid = np.array([[code[architecture.choices[n][t]] for n in nodes] for t in tasks])
    all_shared = (grid == code["shared"]).all(axis=0)
    n_tasks, n_nodes = grid.shape

    size = _sharing_size(n_nodes, n_tasks, max(len(n) for n in nodes))
    fig = _figure(size, dpi)
    fig.get_layout_engine().set(hspace=0.0, h_pad=0.02)
    top, ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [0.55, n_tasks]})
    from matplotlib.colors import ListedColormap
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    cmap = ListedColormap([COLOURS[b] for b in BRANCHES])
    ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=len(BRANCHES) - 0.5, aspect="auto", interpolation="nearest")
    line = 1.2 if n_nodes <= 40 else 0.6
    ax.set_xticks(np.arange(-0.5, n_nodes), minor=True)
    ax.set_yticks(np.arange(-0.5, n_tasks), minor=True)
    ax.grid(which="minor", color="white", linewidth=line)
    ax.tick_params(which="minor", length=0)
    ax.set_yticks(range(n_tasks), tasks)
    step = _label_step(n_nodes, size[0])
    ticks = list(range(0, n_nodes, step))
    fontsize = 8 if n_nodes > 20 else 9
    ax.set_xticks(ticks, [nodes[i] for i in ticks], rotation=60, ha="right", rotation_mode="anchor",
                  fontsize=fontsize)
    ax.set_xlabel("choice node (network order)" + (f"; 1 name in {step} shown" if step > 1 else ""))
    for spine in ax.spines.values():
        spine.set_visible(False)
    for row in range(n_tasks):  # per-task summary on the right
        shared = int((grid[row] == code["shared"]).sum())
        ax.text(n_nodes - 0.5 + 0.25, row, f"{shared}/{n_nodes} shared", va="center", ha="left", fontsize=8,
                color="#333333")

    cols = np.flatnonzero(all_shared)
    top.scatter(cols, np.zeros_like(cols), marker="v", s=min(60, 2400 / n_nodes), color=ALL_SHARED_COLOUR)
    top.set_ylim(-0.6, 0.6)
    top.set_yticks([0], ["all share"])
    top.tick_params(axis="x", which="both", bottom=False, top=False, labelbottom=False)
    top.tick_params(axis="y", length=0)
    for spine in top.spines.values():
        spine.set_visible(False)
    top.set_xlim(-0.5, n_nodes - 0.5)

    handles = [Patch(facecolor=COLOURS[b], label=b) for b in BRANCHES]
    handles.append(Line2D([], [], marker="v", linestyle="", color=ALL_SHARED_COLOUR, label="shared by all tasks"))
    fig.legend(handles=handles, loc="outside lower center", ncols=4, frameon=False, fontsize=9)
    frac = float((grid == code["shared"]).mean())
    nodes_all = f"{len(cols)} node{'s' if len(cols) != 1 else ''}"
    fig.suptitle(title if title is not None else
                 f"Task sharing: {n_tasks} tasks × {n_nodes} choice nodes\n"
                 f"{frac:.0%} of choices shared · {nodes_all} shared by all tasks", fontsize=11)
    return _save(fig, path)


# --- similarity -----------------------------------------------------------------------------------


def task_similarity(architecture: Architecture) -> np.ndarray:
    """The Jaccard matrix of :func:`similarity_matrix`, rows and columns in ``architecture.tasks`` order."""
    _check(architecture)
    _matplotlib()
    import numpy as np

    tasks = list(architecture.tasks)
    sets = {t: {n for n, per in architecture.choices.items() if per[t] == "shared"} for t in tasks}
    out = np.ones((len(tasks), len(tasks)))
    for i, a in enumerate(tasks):
        for j, b in enumerate(tasks):
            union = sets[a] | sets[b]
            out[i, j] = len(sets[a] & sets[b]) / len(union) if union else 1.0
    return out


def _similarity_size(n_tasks: int, longest: int) -> tuple[float, float]:
    side = min(max(1.4 + 0.75 * n_tasks + 0.07 * longest, 4.5), 14.0)
    return round(side + 1.2, 2), round(side, 2)


def similarity_matrix(architecture: Architecture, path: str | os.PathLike,
                      dpi: int = DPI) -> tuple[Path, np.ndarray]:
    """Render task similarity as an annotated heatmap; return ``(path, matrix)``.

    For tasks ``a`` and ``b`` with ``S_a = {v : a takes the shared branch at choice node v}``,
    ``J(a, b) = |S_a ∩ S_b| / |S_a ∪ S_b|``, and ``J(a, b) = 1`` when both sets are empty.
    The matrix is symmetric with ones on the diagonal, rows and columns in ``architecture.tasks`` order.
    """
    matrix = task_similarity(architecture)
    tasks = list(architecture.tasks)
    n = len(tasks)
    fig = _figure(_similarity_size(n, max(len(t) for t in tasks)), dpi)
    ax = fig.subplots()
    im = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), tasks, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center",
                  rotation_mode="anchor")
    ax.set_yticks(range(n), tasks)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fontsize = 11 if n <= 6 else max(6, 11 - (n - 6) // 2)
    for i in range(n):
        for j in range(n):
            v = matrix[i, j]
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=fontsize,
                    color="white" if v > 0.55 else "black")
    fig.colorbar(im, ax=ax, shrink=0.8, label="Jaccard index of shared nodes")
    ax.set_title(f"Task similarity over {len(architecture.choices)} choice nodes", fontsize=11)
    return _save(fig, path), matrix


# --- training curves ------------------------------------------------------------------------------


def _loss_records(history: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The stages to draw (known stages first) and their training records with a ``loss`` mapping."""
    if not isinstance(history, Mapping):
        raise ValueError(f"history must be a mapping stage -> records, got {type(history).__name__}")
    names = [s for s in STAGES if s in history] + [s for s in history if s not in STAGES and s != "val"]
    stages: dict[str, list[dict[str, Any]]] = {}
    for stage in names:
        records = history[stage]
        if not isinstance(records, Sequence):
            raise ValueError(f"history[{stage!r}] must be a list of records, got {type(records).__name__}")
        keep = []
        for i, rec in enumerate(records):
            if not isinstance(rec, Mapping) or "loss" not in rec:
                continue  # e.g. derive records
            if not isinstance(rec["loss"], Mapping) or "step" not in rec:
                raise ValueError(f"history[{stage!r}][{i}]: a loss record needs 'step' and a 'loss' mapping "
                                 f"task -> float")
            keep.append(rec)
        if keep:
            stages[stage] = keep
    return stages


class _Stage:
    """Where one stage lies on the shared x axis: training x = ``offset`` + local step (after it)."""

    def __init__(self, name: str, records: list[dict[str, Any]], offset: float) -> None:
        self.name, self.offset = name, offset
        self.phases: dict[str, list[dict[str, Any]]] = {}
        for rec in records:
            self.phases.setdefault(str(rec.get("phase", "weights")), []).append(rec)
        primary = self.phases.get("weights") or next(iter(self.phases.values()), [])
        steps = [int(r["step"]) for r in primary]
        self.width = float(max(steps) - min(steps) + 1) if steps else 0.0
        iterations = [int(r["iteration"]) for r in records if "iteration" in r]
        self.units = (max(iterations) + 1) if iterations else self.width  # what val "step" counts

    def x(self, phase: str) -> list[float]:
        """Training x of each record of ``phase``; secondary phases are stretched over the stage."""
        recs = self.phases[phase]
        steps = [int(r["step"]) for r in recs]
        lo, span = min(steps), max(steps) - min(steps) + 1
        scale = self.width / span if span else 0.0
        return [self.offset + (s - lo + 1) * scale for s in steps]

    def val_x(self, step: int) -> float:
        if not self.units:
            return self.offset
        return self.offset + min(step + 1, self.units) * self.width / self.units


def _smooth(values: list[float]) -> list[float]:
    """A centred moving average (window ~ n/25) over a noisy loss curve."""
    w = max(1, len(values) // 25)
    if w < 2:
        return values
    out = []
    for i in range(len(values)):
        part = values[max(0, i - w): i + w + 1]
        out.append(sum(part) / len(part))
    return out


def training_curves(history: Mapping[str, Any], path: str | os.PathLike, tasks: Sequence[str] | None = None,
                    dpi: int = DPI) -> Path:
    """Per-task training loss vs step with stages (warm-up, search, fine-tune) laid end to end and
    their boundaries marked; validation losses (``history["val"]``) as diamonds. Returns ``path``.

    ``history`` is :attr:`~automtl.search.searcher.SearchResult.history`. In the search stage the x axis
    counts weight steps; policy-step losses are stretched over the same span and drawn dashed.
    """
    stages = _loss_records(history)
    if not stages:
        listed = ", ".join(map(str, history)) or "none"
        raise ValueError(f"history has no training records with a 'loss' to draw (stages: {listed})")
    seen: list[str] = []
    for records in stages.values():
        for rec in records:
            seen += [t for t in rec["loss"] if t not in seen]
    if tasks is None:
        tasks = seen
    else:
        tasks = list(tasks)
        unknown = [t for t in tasks if t not in seen]
        if unknown or not tasks:
            raise ValueError(f"tasks {unknown or tasks} have no losses in the history (tasks there: {seen})")
    val = [r for r in history.get("val", []) if isinstance(r, Mapping) and r.get("stage") in stages]

    layout: list[_Stage] = []
    offset = 0.0
    for name, records in stages.items():
        layout.append(_Stage(name, records, offset))
        offset += layout[-1].width
    by_name = {s.name: s for s in layout}

    _matplotlib()
    from matplotlib.lines import Line2D

    n = len(tasks)
    fig = _figure((10.0, round(min(1.3 + 2.1 * n, 18.0), 2)), dpi)
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    colours = [f"C{i % 10}" for i in range(len(seen))]
    has_policy = False
    for ax, task in zip(axes, tasks, strict=True):
        colour = colours[seen.index(task)]
        drawn: list[float] = []
        for k, st in enumerate(layout):
            if k % 2:
                ax.axvspan(st.offset, st.offset + st.width, color="#f2f2f2", zorder=0, linewidth=0)
            if k:
                ax.axvline(st.offset, color="#777777", linestyle=":", linewidth=1, zorder=1)
            for phase in st.phases:
                pts = [(x, r["loss"].get(task)) for x, r in zip(st.x(phase), st.phases[phase], strict=True)]
                pts = [(x, float(v)) for x, v in pts if v is not None and math.isfinite(float(v))]
                if not pts:
                    continue
                xs, ys = [p[0] for p in pts], [p[1] for p in pts]
                drawn += ys
                secondary = phase != "weights" and "weights" in st.phases
                has_policy |= secondary
                style: dict[str, Any] = {"linestyle": "--", "alpha": 0.7} if secondary else {"linestyle": "-"}
                smooth = _smooth(ys)
                if smooth is not ys:
                    ax.plot(xs, ys, color=colour, alpha=0.2, linewidth=0.7, zorder=2)
                if len(xs) <= 30:  # few points: mark each (a lone point would not show as a line)
                    style.update(marker="o", markersize=3)
                ax.plot(xs, smooth, color=colour, linewidth=1.4, zorder=3, **style)
        vx, vy = [], []
        for rec in val:
            v = (rec.get("loss") or {}).get(task) if isinstance(rec.get("loss"), Mapping) else None
            if v is not None and math.isfinite(float(v)):
                vx.append(by_name[rec["stage"]].val_x(int(rec.get("step", 0))))
                vy.append(float(v))
        if vx:
            ax.scatter(vx, vy, marker="D", s=30, facecolor="white", edgecolor=colour, linewidth=1.5, zorder=4)
        ax.set_ylabel(f"{task}\nloss")
        ax.grid(axis="y", color="#e0e0e0", linewidth=0.6)
        drawn += vy
        if drawn and min(drawn) > 0 and max(drawn) / min(drawn) > 30:
            ax.set_yscale("log")
    for st in layout:
        if st.width:
            axes[0].text(st.offset + st.width / 2, 1.02, st.name, transform=axes[0].get_xaxis_transform(),
                         ha="center", va="bottom", fontsize=9, color="#444444")
    axes[-1].set_xlabel("training step (stages laid end to end; search counts weight steps)")
    axes[-1].set_xlim(0, max(offset, 1.0) * 1.015)  # room for the last validation marker
    handles = [Line2D([], [], color="#555555", label="training loss")]
    if has_policy:
        handles.append(Line2D([], [], color="#555555", linestyle="--", alpha=0.7, label="policy-split loss"))
    if val:
        handles.append(Line2D([], [], marker="D", linestyle="", markerfacecolor="white", color="#555555",
                              label="validation loss"))
    handles.append(Line2D([], [], color="#777777", linestyle=":", label="stage boundary"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False, fontsize=9)
    fig.suptitle("Training curves", fontsize=11)
    return _save(fig, path)


# --- all at once ----------------------------------------------------------------------------------


def policy_picture(history: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Two heatmaps over the policy steps, one row per (node, task): the gap between the two largest
    logits, and the entropy of the node's options (nats). Needs ``history["policy"]`` records."""
    records = list(history.get("policy") or [])
    if not records:
        raise ValueError("the history has no policy records (a search with policy steps writes them)")
    import numpy as np

    rows = [(n, t) for n, per in records[0]["gap"].items() for t in per]
    steps = [r["step"] for r in records]
    data = {what: np.array([[r[what][n][t] for r in records] for n, t in rows], dtype=float)
            for what in ("gap", "entropy")}
    height = min(2.0 + 0.18 * len(rows), 24.0)
    fig = _figure((12.0, height), DPI)
    for k, (what, cmap, label) in enumerate((("gap", "viridis", "logit gap (top two options)"),
                                             ("entropy", "magma", "entropy (nats)"))):
        ax = fig.add_subplot(1, 2, k + 1)
        image = ax.imshow(data[what], aspect="auto", interpolation="nearest", cmap=cmap,
                          extent=(steps[0] - 0.5, steps[-1] + 0.5, len(rows) - 0.5, -0.5))
        ax.set_xlabel("policy step")
        ax.set_title(label, fontsize=10)
        every = max(1, len(rows) // 40)
        ax.set_yticks(range(0, len(rows), every))
        ax.set_yticklabels([f"{n} · {t}" for n, t in rows[::every]] if k == 0 else [], fontsize=7)
        fig.colorbar(image, ax=ax, fraction=0.04)
    undecided = int((data["gap"][:, -1] < 0.5).sum())
    fig.suptitle(f"How the policy moved · {undecided} of {len(rows)} (node, task) choices end with a logit gap "
                 "< 0.5 (undecided)", fontsize=11)
    return _save(fig, path)


def render_all(result_or_arch: Any, out_dir: str | os.PathLike,
               history: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write ``sharing.png``, ``similarity.png`` and (when a history is there) ``curves.png`` into
    ``out_dir``, from an :class:`Architecture` (and ``history``) or anything with ``.architecture``
    (and ``.history``), such as a :class:`~automtl.search.searcher.SearchResult`. Returns ``{"sharing": path, ...}``."""
    if isinstance(result_or_arch, Architecture):
        arch = result_or_arch
    elif isinstance(getattr(result_or_arch, "architecture", None), Architecture):
        arch, history = result_or_arch.architecture, getattr(result_or_arch, "history", None)
    else:
        raise TypeError(f"render_all takes an Architecture or a SearchResult, got {type(result_or_arch).__name__}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from .block_pictures import is_block_architecture, render_blocks

    if is_block_architecture(arch):  # an MPNAS search: domain paths over blocks, and their Jaccard matrix
        return render_blocks(arch, out, history)
    paths = {"sharing": sharing_picture(arch, out / "sharing.png"),
             "similarity": similarity_matrix(arch, out / "similarity.png")[0]}
    if history and _loss_records(history):
        paths["curves"] = training_curves(history, out / "curves.png")
    if history and history.get("policy"):
        paths["policy"] = policy_picture(history, out / "policy.png")
    return paths
