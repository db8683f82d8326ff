"""What a run records: ``metrics.jsonl`` (one JSON line per record, appended and flushed as it is
logged; cut back to a checkpoint on resume), ``metrics.csv``, TensorBoard scalars, and the report
table (per-task metrics, Δ_MTL, params, FLOPs, latency)."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..model.latency import measure_latency
from ..train.tasks import Task
from .integrity import TMP_PREFIX, RunError, atomic_write_text

__all__ = ["MetricsWriter", "Row", "delta_mtl", "flatten", "format_table", "measure_latency", "read_metrics",
           "report_markdown", "report_table"]

METRICS = "metrics.jsonl"


# --- metrics ----------------------------------------------------------------------------------------


def flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"loss": {"a": 1.0}}`` -> ``{"loss/a": 1.0}``; only numbers, strings, booleans and None are kept."""
    out: dict[str, Any] = {}
    for k, v in record.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            if k != "chosen":  # the chosen architecture is architecture.json
                out.update(flatten(v, key + "/"))
        elif v is None or isinstance(v, bool | int | float | str):
            out[key] = v
    return out


def read_metrics(file: Path, keep: int | None, note: Callable[[str], None]) -> list[str]:
    """The first ``keep`` (``None``: all) readable lines of ``metrics.jsonl``, each ending in a newline.

    A torn last line (a write cut short) and an unreadable line with everything after it are
    dropped, saying so through ``note``; so is a file holding fewer than ``keep`` records
    (deleted or cut): those records are lost from the file, and ``note`` says how many."""
    if not file.is_file():
        if keep:
            note(f"{file}: missing; the {keep} records logged up to the checkpoint are lost from it "
                 "(history.json, written at the end, holds every record)")
        return []
    text = file.read_bytes().decode("utf-8", errors="replace")
    *complete, tail = text.split("\n")
    if tail:
        note(f"{file}: dropped a torn last line ({len(tail)} bytes, a write cut short)")
    lines = []
    for number, line in enumerate(complete, 1):
        try:
            json.loads(line)
        except json.JSONDecodeError:
            note(f"{file}: line {number} is not a JSON record; it and the {len(complete) - number} lines after it "
                 "are dropped")
            break
        lines.append(line + "\n")
    if keep is not None and len(lines) < keep:
        note(f"{file}: holds {len(lines)} of the {keep} records logged up to the checkpoint; the other "
             f"{keep - len(lines)} are lost from it (history.json, written at the end, holds every record)")
    return lines if keep is None else lines[:keep]


class MetricsWriter:
    """A :class:`Searcher` sink: every record as a JSON line (written and flushed at once), and as
    TensorBoard scalars when ``tensorboard`` is installed (``tensorboard=False`` turns that off).

    On a resume (``keep`` records up to the checkpoint) the file is read at once, but nothing is
    written before the first new record arrives: a command that fails before its first step
    leaves the file as it was. ``on_first`` is called then, before anything is written."""

    def __init__(self, folder: Path, keep: int = 0, tensorboard: bool = True,
                 note: Callable[[str], None] = lambda msg: None, on_first: Callable[[], None] = lambda: None) -> None:
        self.file = folder / METRICS
        self.csv = folder / "metrics.csv"
        self._folder = folder
        self._lines = read_metrics(self.file, keep, note) if (keep or self.file.exists()) else []
        self._tensorboard = tensorboard
        self._on_first = on_first
        self._out: Any = None
        self.tb: Any = None
        self._counts: dict[str, int] = {}

    def _open(self) -> None:
        self._on_first()
        if self.file.exists() or self._lines:
            atomic_write_text(self.file, "".join(self._lines))
        self._out = self.file.open("a", encoding="utf-8")
        self.tb = _summary_writer(self._folder / "tensorboard") if self._tensorboard else None

    def __call__(self, stage: str, record: Mapping[str, Any]) -> None:
        if self._out is None:
            self._open()
        flat = flatten(record)
        if stage == "val":
            flat["after"] = flat.pop("stage", None)
        self._out.write(json.dumps({"stage": stage, **flat}) + "\n")
        self._out.flush()
        if self.tb is not None:
            group = "/".join(str(p) for p in (stage, flat.get("phase") or flat.get("after")) if p)
            step = self._counts[group] = self._counts.get(group, -1) + 1
            for key, value in flat.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and key not in ("step", "iteration"):
                    self.tb.add_scalar(f"{group}/{key}", value, step)

    def write_csv(self) -> None:
        """``metrics.csv`` from ``metrics.jsonl``: one row per record, one column per key seen."""
        write_csv(self.file, self.csv)

    def close(self, csv: bool = True) -> None:
        """Close the file (and, when records were written and ``csv``, write ``metrics.csv``)."""
        if self._out is None:
            return
        self._out.close()
        if self.tb is not None:
            self.tb.close()
        if csv:
            self.write_csv()


def write_csv(jsonl: Path, out: Path) -> None:
    """``out`` (CSV) from the JSON lines of ``jsonl``: one row per record, one column per key seen."""
    rows = []
    for number, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise RunError(f"{jsonl}:{number}: not a JSON record ({e.msg}); remove that line") from None
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    tmp = out.with_name(f"{TMP_PREFIX}{out.name}.{os.getpid()}")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out)


def _summary_writer(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(folder))



@dataclass
class Row:
    """One model of the report: primary metric per task, params, FLOPs, latency (ms, one batch)."""

    name: str
    metrics: dict[str, float]
    params: int
    flops: int
    latency_ms: float


def delta_mtl(row: Row, base: Row, tasks: Mapping[str, Task]) -> float:
    """Mean relative improvement over ``base`` of each task's primary metric, in percent."""
    out = []
    for name, task in tasks.items():
        metric = task.primary_metric
        b, m = base.metrics[name], row.metrics[name]
        sign = 1 if task.higher_is_better[metric] else -1
        out.append(sign * (m - b) / abs(b) if b else 0.0)
    return 100 * sum(out) / len(out)


def format_table(rows: Sequence[Row], primary: Mapping[str, str], higher: Mapping[str, bool],
                 deltas: Mapping[str, float] | None = None) -> str:
    """A markdown table: per-task primary metric, Δ_MTL (vs the first row), params, FLOPs, latency."""
    head = ["model", *(f"{t} {m}{'↑' if higher[t] else '↓'}" for t, m in primary.items())]
    head += (["Δ_MTL %"] if deltas else []) + ["params", "FLOPs", "latency ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.name, *(f"{r.metrics[t]:.4f}" if not math.isnan(r.metrics[t]) else "nan" for t in primary)]
        cells += [f"{deltas[r.name]:+.1f}"] if deltas else []
        cells += [f"{r.params:,}", f"{r.flops:,}", f"{r.latency_ms:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_table(report: Mapping[str, Any]) -> str:
    """The table of a ``report.json``."""
    rows = [Row(**r) for r in report["rows"]]
    return format_table(rows, report["tasks"], report["higher_is_better"], report.get("delta_mtl"))


def architecture_note(report: Mapping[str, Any]) -> str:
    """What the search chose, in words; a trivial choice is said to be one, and never credited with a
    difference that comes from the training schedule."""
    described = report.get("architecture") or f"shares {100 * report['shared_fraction']:.0f}%"
    text = f"Searched architecture: {described}."
    steps = report.get("baseline_steps")
    if steps is not None:
        text += f" Every baseline trained from scratch for {steps} weight steps, as many as the searched model took."
    trivial = report.get("trivial")
    twin = {"all-shared": "all-shared", "all-specific": "independent"}.get(trivial or "")
    if twin:
        text += (f" The search found nothing to split: it chose the {trivial} architecture, the same as the {twin} "
                 f"baseline, so any difference between those two rows comes from the training schedule (the searched "
                 "model starts from the supermodel's weights), not from the architecture.")
    return text


def report_markdown(report: Mapping[str, Any], title: str) -> str:
    """``report.md``: the table, the searched model per task and the pictures."""
    lines = [f"# {title}", "", f"Backbone `{report['backbone']}` up to `{report['trunk_output']}`, input "
             f"{'x'.join(map(str, report['input']))}; tasks {', '.join(report['tasks'])}.", "",
             report_table(report), "",
             architecture_note(report) + f" Params {report['params_ratio']:.2f}x and FLOPs "
             f"{report['flops_ratio']:.2f}x of {len(report['tasks'])} separate backbones.", "",
             "| task | params | FLOPs |", "|---|---|---|"]
    lines += [f"| {t} | {v['params']:,} | {v['flops']:,} |" for t, v in report["per_task"].items()]
    pictures = report.get("pictures", {})
    if pictures:
        lines += [""] + [f"![{name}]({path})" for name, path in pictures.items()]
    return "\n".join(lines) + "\n"


