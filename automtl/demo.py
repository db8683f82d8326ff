"""The demo (``automtl demo`` / ``make demo``): compile a zoo backbone, search on SyntheticScenes,
derive, and compare independent single-task models, the all-shared model and the searched one.

Every model gets the same number of weight steps, so the comparison is about the architecture.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import build, compile
from .data import SyntheticScenes
from .derive import MultiTaskModel
from .search import SearchConfig, Searcher
from .tasks import Depth, Normals, Segmentation, Task, dense_head


@dataclass
class Row:
    name: str
    metrics: dict[str, float]
    params: int
    flops: int
    latency_ms: float


def _tasks(num_classes: int) -> dict[str, Task]:
    return {"segmentation": Segmentation("segmentation", num_classes), "depth": Depth("depth"),
            "normals": Normals("normals")}


def _latency(models: list[MultiTaskModel], shape: tuple[int, ...], rounds: int = 20) -> float:
    """Median ms of one batch through every model (all tasks)."""
    x = torch.randn(shape)
    times = []
    with torch.inference_mode():
        for m in models:
            m.eval()(x)
        for _ in range(rounds):
            t0 = time.perf_counter()
            for m in models:
                m(x)
            times.append(time.perf_counter() - t0)
    times.sort()
    return 1000 * times[len(times) // 2]


def delta_mtl(rows: Row, base: Row, tasks: dict[str, Task]) -> float:
    """Mean relative improvement over ``base`` of each task's primary metric, in percent."""
    out = []
    for name, task in tasks.items():
        metric = task.primary_metric
        b, m = base.metrics[name], rows.metrics[name]
        sign = 1 if task.higher_is_better[metric] else -1
        out.append(sign * (m - b) / abs(b) if b else 0.0)
    return 100 * sum(out) / len(out)


def run_demo(
    backbone: str = "resnet18",
    trunk_output: str = "layer2",
    size: int = 32,
    images: int = 500,
    warmup_steps: int = 60,
    search_iterations: int = 40,
    finetune_steps: int = 80,
    batch_size: int = 16,
    out_dir: str | Path = "runs/demo",
    seed: int = 0,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run the demo, print the comparison table and write the run directory; returns the report.

    ``quiet`` silences progress (bars and stage lines), not the table.
    """
    torch.manual_seed(seed)
    say = (lambda *a: None) if quiet else print
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    graph = compile(backbone, (3, size, size))
    say(f"compiled {backbone}: {len(graph)} operators, {graph.params:,} params, {graph.flops:,} FLOPs at {size}x{size}")
    data = SyntheticScenes(images, size=size, seed=seed)
    num_classes = data.num_classes

    def make(tasks: dict[str, Task]) -> Any:
        probe = build(graph, {t: torch.nn.Identity() for t in tasks}, trunk_output=trunk_output, check_heads=False)
        shape = probe.graph[probe.graph.outputs[0]].shape
        heads = {t: dense_head(shape[1], tasks[t].out_channels, size // shape[2], hidden_channels=32) for t in tasks}
        return build(graph, heads, trunk_output=trunk_output, bn="follow")

    total_steps = warmup_steps + search_iterations + finetune_steps
    base_cfg = dict(batch_size=batch_size, seed=seed, quiet=quiet, eval_batch_size=64)
    all_tasks = _tasks(num_classes)

    # searched: warm-up, policy search, derive, fine-tune
    say("searching ...")
    model = make(all_tasks)
    cfg = SearchConfig(warmup_steps=warmup_steps, search_iterations=search_iterations, finetune_steps=finetune_steps,
                       tau_interval=10, **base_cfg)
    searcher = Searcher(model, all_tasks, data, cfg)
    result = searcher.run()
    searched = result.model

    def baseline(tasks: dict[str, Task], arch_branch: str = "shared") -> tuple[MultiTaskModel, dict[str, Any]]:
        m = make(tasks)
        s = Searcher(m, tasks, data, SearchConfig(finetune_steps=total_steps, **base_cfg))
        derived = s.finetune(m.uniform_architecture(arch_branch), steps=total_steps, from_="scratch")
        return derived, s.validate(derived)["metrics"]

    say("training the all-shared model ...")
    shared, shared_metrics = baseline(all_tasks)
    say("training independent single-task models ...")
    independent = [baseline({t: task}) for t, task in all_tasks.items()]

    shape = (1, 3, size, size)
    primary = {t: all_tasks[t].primary_metric for t in all_tasks}
    rows = [
        Row("independent", {t: independent[i][1][t][primary[t]] for i, t in enumerate(all_tasks)},
            sum(m.report()["total"]["params"] for m, _ in independent),
            sum(m.report()["total"]["flops"] for m, _ in independent), _latency([m for m, _ in independent], shape)),
        Row("all-shared", {t: shared_metrics[t][primary[t]] for t in all_tasks}, shared.report()["total"]["params"],
            shared.report()["total"]["flops"], _latency([shared], shape)),
        Row("searched", {t: result.metrics[t][primary[t]] for t in all_tasks}, searched.report()["total"]["params"],
            searched.report()["total"]["flops"], _latency([searched], shape)),
    ]
    table = format_table(rows, all_tasks)
    arch = result.architecture
    arch.save(out / "architecture.json")
    searched.save(out / "model.pt")
    report = {"backbone": backbone, "trunk_output": trunk_output, "input": list(shape), "tasks": primary,
              "rows": [r.__dict__ for r in rows], "shared_fraction": arch.shared_fraction(),
              "delta_mtl": {r.name: delta_mtl(r, rows[0], all_tasks) for r in rows}}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(f"# automtl demo\n\n{table}\n")
    print()
    print(table)
    print(f"\nsearched architecture shares {100 * arch.shared_fraction():.0f}% of (operator, task) choices; "
        f"run directory: {out}")
    return report


def format_table(rows: list[Row], tasks: dict[str, Task]) -> str:
    """A markdown table: per-task primary metric, Δ_MTL, params, FLOPs and latency per model."""
    def title(t: str) -> str:
        metric = tasks[t].primary_metric
        return f"{t} {metric}{'↑' if tasks[t].higher_is_better[metric] else '↓'}"

    head = ["model", *(title(t) for t in tasks), "Δ_MTL %", "params", "FLOPs", "latency ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.name, *(f"{r.metrics[t]:.4f}" if not math.isnan(r.metrics[t]) else "nan" for t in tasks),
                 f"{delta_mtl(r, rows[0], tasks):+.1f}", f"{r.params:,}", f"{r.flops:,}", f"{r.latency_ms:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
