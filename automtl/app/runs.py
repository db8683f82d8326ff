"""Run directories: what ``automtl search CONFIG`` (and the demo) write, and what ``derive``,
``report``, ``show`` and ``export`` read.

A run directory holds::

    automtl-run.json     format, version, automtl version, status (running / stopped / done)
    config.yaml          the resolved config (every default filled in)
    checkpoint.pt        the search checkpoint (every ``checkpoint_every`` steps; exact resume)
    metrics.jsonl        one line per logged record (weight/policy steps, validations, derivation)
    metrics.csv          the same as a table (written when the search ends or stops)
    tensorboard/         event files, when the ``tensorboard`` package is installed
    history.json         the search's history (per stage), for pictures
    supermodel.pt        the searched supermodel's weights and logits (``derive --sample``)
    architecture.json    the derived architecture
    model.pt             the fine-tuned derived model (:meth:`MultiTaskModel.load`)
    report.json/.md      metrics, params, FLOPs, latency: searched vs the baselines
    pictures/            sharing.png, similarity.png, curves.png

A new run never writes into a directory that holds files; ``resume=True`` continues a stopped
run only with the same resolved config and a run format this automtl reads. Only process 0 of a
distributed run writes.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..model.architecture import Architecture
from ..model.derive import MultiTaskModel
from ..search import distributed as dist_utils
from ..search.searcher import Searcher
from ..train.tasks import Task
from .config import RunConfig, build_dataset, build_model, build_tasks, dump_config, load_config

__all__ = ["FORMAT", "META", "VERSION", "MetricsWriter", "Row", "RunDir", "delta_mtl", "format_table", "run_search"]

FORMAT = "automtl.run"
VERSION = 1
META = "automtl-run.json"


class RunError(ValueError):
    """A run directory that cannot be used as asked (one line: the directory and what to do)."""


# --- the directory --------------------------------------------------------------------------------


class RunDir:
    """A run directory: its files by name, its metadata, and the checks before writing into it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # metadata
    def meta(self) -> dict[str, Any]:
        """``automtl-run.json``, checked: ``RunError`` when missing or of another format or version."""
        file = self / META
        if not file.is_file():
            raise RunError(f"{self.path}: not an automtl run directory (no {META}); "
                           "`automtl search CONFIG --out DIR` makes one")
        try:
            meta = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise RunError(f"{file}: unreadable ({e}); the run directory is damaged") from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            got = meta.get("format") if isinstance(meta, dict) else meta
            raise RunError(f"{file}: not an automtl run (format {got!r}, expected {FORMAT!r})")
        if meta.get("version") != VERSION:
            raise RunError(f"{self.path}: written by automtl {meta.get('automtl', '?')} in run format "
                           f"{meta.get('version')!r}; this automtl {__version__} reads format {VERSION}: "
                           "use that automtl version, or start a new run")
        return meta

    def write_meta(self, **changes: Any) -> None:
        meta = self.meta() if (self / META).is_file() else {"format": FORMAT, "version": VERSION,
                                                             "created": _now()}
        meta.update(changes, automtl=__version__, updated=_now())
        _write_text(self / META, json.dumps(meta, indent=1) + "\n")

    def config(self) -> RunConfig:
        """The run's resolved config (``config.yaml``)."""
        self.meta()
        return load_config(self / "config.yaml")

    def require(self, name: str, hint: str) -> Path:
        file = self / name
        if not file.exists():
            raise RunError(f"{self.path}: no {name}; {hint}")
        return file

    # the checks before writing
    def create(self, cfg: RunConfig, command: str) -> None:
        """Start a new run here: refuse any directory that already holds files."""
        if self.path.exists() and not self.path.is_dir():
            raise RunError(f"{self.path}: exists and is not a directory; choose another --out")
        if self.path.is_dir() and any(self.path.iterdir()):
            what = "a run" if (self / META).is_file() else "files"
            raise RunError(f"{self.path}: already holds {what}; nothing was changed. Pass --resume to continue a "
                           "stopped run there, or choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        self.write_meta(status="running", command=command)
        dump_config(cfg, self / "config.yaml")

    def check_resume(self, cfg: RunConfig) -> None:
        """Allow a resume: same format, not finished, the same resolved config."""
        meta = self.meta()
        if meta.get("status") == "done":
            raise RunError(f"{self.path}: this run has finished; nothing to resume (`automtl report {self.path}`)")
        saved = load_config(self / "config.yaml").to_dict()
        diff = _first_difference(saved, cfg.to_dict())
        if diff is not None:
            key, was, now = diff
            raise RunError(f"{self.path}: the config differs from the run's in {key} (run: {was!r}, now: {now!r}); "
                           "resume with the run's config.yaml, or start a new run with another --out")


def _first_difference(a: Any, b: Any, where: str = "") -> tuple[str, Any, Any] | None:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for k in list(a) + [k for k in b if k not in a]:
            found = _first_difference(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))
            if found is not None:
                return found
        return None
    return None if a == b else (where or "the config", a, b)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _write_text(path: Path, text: str) -> None:
    """Write through a temporary file and a rename, so a crash never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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


class MetricsWriter:
    """A :class:`Searcher` sink: every record as a JSON line, and as TensorBoard scalars when
    ``tensorboard`` is installed (``tensorboard=False`` turns that off)."""

    def __init__(self, run: RunDir, keep_lines: int = 0, tensorboard: bool = True) -> None:
        self.file = run / "metrics.jsonl"
        if self.file.is_file():  # a resume: keep the records up to the checkpoint, drop those after it
            lines = self.file.read_text().splitlines(keepends=True)[:keep_lines]
            _write_text(self.file, "".join(lines))
        self.csv = run / "metrics.csv"
        self._out = self.file.open("a")
        self.tb = _summary_writer(run / "tensorboard") if tensorboard else None
        self._counts: dict[str, int] = {}

    def __call__(self, stage: str, record: Mapping[str, Any]) -> None:
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
        self._out.flush()
        rows = [json.loads(line) for line in self.file.read_text().splitlines() if line.strip()]
        columns: dict[str, None] = {}
        for row in rows:
            columns.update(dict.fromkeys(row))
        tmp = self.csv.with_name(".metrics.csv.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.csv)

    def close(self) -> None:
        self.write_csv()
        self._out.close()
        if self.tb is not None:
            self.tb.close()


def _summary_writer(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(folder))


# --- the report -----------------------------------------------------------------------------------


@dataclass
class Row:
    """One model of the report: primary metric per task, params, FLOPs, latency (ms, one batch)."""

    name: str
    metrics: dict[str, float]
    params: int
    flops: int
    latency_ms: float


def measure_latency(models: Sequence[MultiTaskModel], shape: Sequence[int], rounds: int = 20) -> float:
    """Median ms of one batch of ``shape`` through every model (all tasks), after a warm-up pass."""
    x = torch.randn(tuple(shape), device=next(models[0].parameters()).device)
    times = []
    with torch.inference_mode():
        for m in models:
            m.eval()(x)
        for _ in range(rounds):
            if x.is_cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for m in models:
                m(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    times.sort()
    return 1000 * times[len(times) // 2]


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


def report_markdown(report: Mapping[str, Any], title: str) -> str:
    """``report.md``: the table, the searched model per task and the pictures."""
    lines = [f"# {title}", "", f"Backbone `{report['backbone']}` up to `{report['trunk_output']}`, input "
             f"{'x'.join(map(str, report['input']))}; tasks {', '.join(report['tasks'])}.", "",
             report_table(report), "",
             f"The searched architecture shares {100 * report['shared_fraction']:.0f}% of its (operator, task) "
             f"choices; params {report['params_ratio']:.2f}x and FLOPs {report['flops_ratio']:.2f}x of "
             f"{len(report['tasks'])} separate backbones.", "",
             "| task | params | FLOPs |", "|---|---|---|"]
    lines += [f"| {t} | {v['params']:,} | {v['flops']:,} |" for t, v in report["per_task"].items()]
    pictures = report.get("pictures", {})
    if pictures:
        lines += [""] + [f"![{name}]({path})" for name, path in pictures.items()]
    return "\n".join(lines) + "\n"


# --- running a search into a run directory ------------------------------------------------------------


def run_search(cfg: RunConfig, out: str | os.PathLike[str], *, resume: bool = False, quiet: bool = False,
               stop_after: int | None = None, title: str = "automtl search", command: str = "search",
               say: Any = print) -> dict[str, Any] | None:
    """Search ``cfg`` into the run directory ``out``; returns the report (``None`` when stopped).

    Checkpoints every ``cfg.checkpoint_every`` steps of warm-up and search. ``stop_after=k`` stops
    after ``k`` steps (a checkpoint is saved); ``resume=True`` goes on from the last checkpoint,
    bit for bit, provided the config is the run's. Then derives, fine-tunes, trains the
    baselines, measures latency and writes the report and the pictures. ``say`` prints progress
    lines and the table (only in process 0).
    """
    rank, world = dist_utils.rank_and_world()
    talk = say if rank == 0 else (lambda *a, **k: None)
    note = (lambda *a, **k: None) if quiet else talk
    run = RunDir(out)
    if resume:
        run.check_resume(cfg)
    else:
        _on_first_process(lambda: run.create(cfg, command), rank, world)

    tasks = build_tasks(cfg)
    data = build_dataset(cfg)
    model = build_model(cfg)
    search_cfg = replace(cfg.search, quiet=quiet or rank != 0)
    checkpoint = run / "checkpoint.pt"
    if resume and checkpoint.is_file():
        searcher = Searcher.resume(checkpoint, model, tasks, data, search_cfg)
        note(f"resuming {run.path} after {searcher.steps_done()} steps")
    else:
        searcher = Searcher(model, tasks, data, search_cfg)
    writer = None
    if rank == 0:  # a resumed history ends at its checkpoint: so must the metrics file
        writer = MetricsWriter(run, keep_lines=sum(len(v) for v in searcher.history.values()))
        searcher.sinks.append(writer)
    note(f"{cfg.backbone.name}: {len(model.choices)} choices x {len(searcher.names)} tasks on {searcher.device}"
         + (f", {world} processes" if world > 1 else ""))
    try:
        result = searcher.run(stop_after=stop_after, checkpoint=checkpoint, checkpoint_every=cfg.checkpoint_every)
        if result is None:
            if rank == 0:
                run.write_meta(status="stopped", steps=searcher.steps_done())
            talk(f"stopped after {searcher.steps_done()} steps; checkpoint {checkpoint}. Go on with --resume")
            return None
        report = _finish(cfg, run, searcher, result, tasks, data, note, rank)
    finally:
        if writer is not None:
            writer.close()
    if rank == 0:
        _write_text(run / "report.json", json.dumps(report, indent=1) + "\n")
        _write_text(run / "report.md", report_markdown(report, title))
        run.write_meta(status="done", steps=searcher.steps_done())
    talk("")
    talk(report_table(report))
    talk(f"\nsearched architecture shares {100 * report['shared_fraction']:.0f}% of (operator, task) choices; "
         f"run directory: {run.path}")
    return report


def _on_first_process(action: Any, rank: int, world: int) -> None:
    """Run ``action`` in process 0; the others wait for it and raise the same ``RunError`` if it fails."""
    error = None
    if rank == 0:
        try:
            action()
        except RunError as e:
            error = str(e)
    if world > 1:
        box = [error]
        torch.distributed.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise RunError(error)


def _finish(cfg: RunConfig, run: RunDir, searcher: Searcher, result: Any, tasks: Mapping[str, Task], data: Any,
            note: Any, rank: int) -> dict[str, Any]:
    """Save the searched model, train the baselines, measure, draw: the report."""
    names = list(tasks)
    primary = {t: tasks[t].primary_metric for t in names}
    if rank == 0:
        result.architecture.save(run / "architecture.json")
        result.model.save(run / "model.pt")
        torch.save(searcher.model.state_dict(), run / "supermodel.pt")
        _write_text(run / "history.json", json.dumps(searcher.history) + "\n")
    shape = (1, *cfg.backbone.input_shape)
    rows: list[Row] = []
    trained_steps = cfg.search.warmup_steps + cfg.search.search_iterations + cfg.search.finetune_steps
    for baseline in cfg.baselines:
        note(f"training the {baseline} baseline{'s' if baseline == 'independent' else ''} ...")
        groups = [[t] for t in names] if baseline == "independent" else [names]
        models, metrics = [], {}
        for group in groups:
            m, ev = _train_baseline(cfg, {t: tasks[t] for t in group}, data, trained_steps)
            models.append(m)
            metrics.update({t: ev[t][primary[t]] for t in group})
        totals = [m.report()["total"] for m in models]
        rows.append(Row(baseline, metrics, sum(t["params"] for t in totals), sum(t["flops"] for t in totals),
                        measure_latency(models, shape)))
    searched = result.model
    rep = searched.report()
    rows.append(Row("searched", {t: result.metrics[t][primary[t]] for t in names}, rep["total"]["params"],
                    rep["total"]["flops"], measure_latency([searched], shape)))
    deltas = ({r.name: delta_mtl(r, rows[0], tasks) for r in rows} if len(rows) > 1 else None)
    pictures: dict[str, str] = {}
    if rank == 0:
        from .pictures import render_all

        pictures = {k: str(Path(v).relative_to(run.path)) for k, v in render_all(result, run / "pictures").items()}
    return {
        "backbone": cfg.backbone.name, "trunk_output": cfg.backbone.trunk_output, "input": list(shape),
        "tasks": primary, "higher_is_better": {t: bool(tasks[t].higher_is_better[primary[t]]) for t in names},
        "rows": [asdict(r) for r in rows], "delta_mtl": deltas, "metrics": result.metrics, "losses": result.losses,
        "shared_fraction": result.architecture.shared_fraction(), "params_ratio": rep["params_ratio"],
        "flops_ratio": rep["flops_ratio"], "per_task": rep["per_task"], "pictures": pictures,
        "device": str(searcher.device), "processes": searcher.world, "amp": cfg.search.amp,
    }


def _train_baseline(cfg: RunConfig, tasks: Mapping[str, Task], data: Any, steps: int
                    ) -> tuple[MultiTaskModel, dict[str, Any]]:
    """An all-shared model of ``tasks`` trained from scratch for ``steps`` weight steps."""
    model = build_model(cfg, list(tasks))
    s = Searcher(model, tasks, data, replace(cfg.search, finetune_steps=steps, quiet=True))
    derived = s.finetune(model.uniform_architecture("shared"), steps=steps, from_="scratch")
    return derived, s.validate(derived)["metrics"]


# --- reading a finished run ---------------------------------------------------------------------------


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``report.json`` of a finished run (``RunError`` when the run has none)."""
    run = RunDir(path)
    run.meta()
    file = run.require("report.json", "the run has not finished (`automtl search CONFIG --out RUN --resume`)")
    return json.loads(file.read_text())


def load_history(run: RunDir) -> dict[str, list[dict[str, Any]]] | None:
    file = run / "history.json"
    return json.loads(file.read_text()) if file.is_file() else None


def searcher_for(run: RunDir, quiet: bool = True) -> Searcher:
    """A searcher over the run's data holding its searched supermodel (weights and logits)."""
    cfg = run.config()
    weights = run.require("supermodel.pt", "the search has not finished (`automtl search CONFIG --out RUN --resume`)")
    model = build_model(cfg)
    searcher = Searcher(model, build_tasks(cfg), build_dataset(cfg), replace(cfg.search, quiet=quiet))
    try:
        model.load_state_dict(torch.load(weights, map_location=searcher.device, weights_only=True))
    except RuntimeError as e:
        raise RunError(f"{weights}: does not fit the model of {run / 'config.yaml'}: {str(e).splitlines()[0]}") from e
    return searcher


def derive_run(path: str | os.PathLike[str], sample: int = 0) -> tuple[Architecture, list[dict[str, Any]], Searcher]:
    """Derive again from a run's searched policy: the argmax, or (``sample=k``) the best on validation of
    the argmax and ``k`` samples. Returns the architecture, the candidates' records and the searcher."""
    searcher = searcher_for(RunDir(path))
    arch = searcher.derive("sample" if sample else "argmax", k=max(sample, 1))
    return arch, list(searcher.history["derive"]), searcher
