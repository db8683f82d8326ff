"""Run directories: what ``automtl search CONFIG`` (and the demo) write, and what ``derive``,
``report``, ``show`` and ``export`` read.

A run directory holds::

    automtl-run.json     the manifest: format, version, status (running / stopped / failed / done), the
                         reason of a failure, and the sha256 of every file below that a run reads back
    automtl-run.lock     locked by the process writing the run (it holds that process's pid)
    config.yaml          the resolved config (every default filled in)
    checkpoint.pt        the search checkpoint (every ``checkpoint_every`` steps; exact resume)
    checkpoint.prev.pt   the checkpoint before it
    metrics.jsonl        one line per logged record (weight/policy steps, validations, derivation)
    metrics.csv          the same as a table (written when the search ends or stops)
    tensorboard/         event files, when the ``tensorboard`` package is installed
    history.json         the search's history (per stage), for pictures
    supermodel.pt        the searched supermodel's weights and logits (``derive --sample``)
    architecture.json    the derived architecture
    model.pt             the fine-tuned derived model (:meth:`MultiTaskModel.load`)
    result.json          the searched model's validation metrics and losses
    report.json/.md      metrics, params, FLOPs, latency: searched vs the baselines
    pictures/            sharing.png, similarity.png, curves.png

A new run never writes into a directory that holds files; ``resume=True`` continues a stopped or
failed run only with the same resolved config and a run format this automtl reads. One process
writes a run at a time (the lock; under ``torchrun`` process 0 holds it and writes). A command
that fails before its first step leaves the directory as it found it; one that fails later
leaves status ``failed`` and the reason, and ``--resume`` goes on from the last checkpoint. A
run whose search finished but whose report failed is completed by ``automtl report RUN`` (or
``--resume``) without searching again.

Each search strategy that writes a run directory has a :class:`RunKind`, named by its entry in the
strategy registry (``Strategy.run_kind``, looked up by the config's ``search.strategy``): how it
builds its data and model, makes or resumes its searcher, trains a baseline, counts the searched
model's weight steps, measures latency and adds its own entries to the report. ``automtl`` (this
module) and ``mpnas`` (:mod:`automtl.app.mpnas_cli`) share everything else: the manifest, the
lock, checkpoints, resume, failure states, the report and the pictures.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..model.architecture import Architecture
from ..model.derive import MultiTaskModel
from ..search import distributed as dist_utils
from ..search.searcher import Searcher
from ..train.tasks import Task
from .config import RunConfig, build_dataset, build_model, build_tasks
from .integrity import StagedFile, one_line, os_error_line
from .records import (
    MetricsWriter,
    Row,
    architecture_note,
    delta_mtl,
    flatten,
    format_table,
    measure_latency,
    report_markdown,
    report_table,
    write_csv,
)
from .run_kinds import RunKind, run_kind
from .run_life import claim, guard_checkpoints, on_first_process, one_line_error, record_failure
from .rundir import CHECKPOINT, FORMAT, LOCK, META, VERSION, NotWritable, RunDir, RunError

__all__ = ["CHECKPOINT", "FORMAT", "LOCK", "META", "VERSION", "MetricsWriter", "Row", "RunDir",
           "RunError", "RunKind", "Searched", "complete_report", "delta_mtl", "derive_run", "flatten", "format_table",
           "load_report", "measure_latency", "report_markdown", "report_table", "run_kind", "run_search"]

#: what the search leaves for the report, each recorded with its hash
SEARCH_FILES = ("architecture.json", "model.pt", "supermodel.pt", "history.json", "result.json")


def _silent(*args: Any, **kwargs: Any) -> None:
    return None


def _stderr_note(message: str) -> None:
    print(f"automtl: note: {message}", file=sys.stderr)


@dataclass
class Searched:
    """What the search produced and the report needs; kept in the run directory (:data:`SEARCH_FILES`)."""

    architecture: Architecture
    model: MultiTaskModel
    history: dict[str, list[dict[str, Any]]]
    metrics: dict[str, Any]
    losses: dict[str, Any]
    device: str
    processes: int


# --- the AutoMTL search's run kind --------------------------------------------------------------------


def _automtl_searcher(model: Any, tasks: Mapping[str, Task], data: Any, config: Any,
                      checkpoint: str | None) -> Searcher:
    if checkpoint is not None:
        return Searcher.resume(checkpoint, model, tasks, data, config)
    return Searcher(model, tasks, data, config)


def _automtl_steps(cfg: RunConfig) -> int:
    c = cfg.search  # warm-up, search iterations x weight steps each, fine-tuning
    return c.warmup_steps + c.search_iterations * c.weight_steps_per_iter + c.finetune_steps


#: the AutoMTL search; its model and baselines are looked up here when used (tests replace them)
AUTOMTL = RunKind(
    name="automtl", data=lambda cfg: build_dataset(cfg), model=lambda cfg, names: build_model(cfg, names),
    searcher=_automtl_searcher, baseline=lambda cfg, tasks, data, steps: _train_baseline(cfg, tasks, data, steps),
    steps=_automtl_steps)


# --- running a search into a run directory ------------------------------------------------------------


def run_search(cfg: RunConfig, out: str | os.PathLike[str], *, resume: bool = False, quiet: bool = False,
               stop_after: int | None = None, title: str = "automtl search", command: str = "search",
               say: Any = print, note: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """Search ``cfg`` into the run directory ``out``; returns the report (``None`` when stopped).

    Checkpoints every ``cfg.checkpoint_every`` steps of warm-up and search. ``stop_after=k`` stops
    after ``k`` steps (a checkpoint is saved); ``resume=True`` goes on from the last checkpoint,
    bit for bit, provided the config is the run's. Then derives, fine-tunes, trains the
    baselines, measures latency and writes the report and the pictures. ``say`` prints progress
    lines and the table, ``note`` (default: stderr) what was found wrong and repaired; both only
    in process 0. A failure is one ``RunError`` line where its cause is known (NaN loss, file
    system, memory), with the run's status updated.
    """
    kind = run_kind(cfg.strategy)
    rank, world = dist_utils.rank_and_world()
    talk = say if rank == 0 else _silent
    progress = _silent if quiet else talk
    warn = (note or _stderr_note) if rank == 0 else _silent
    run = RunDir(out)
    if not resume:
        on_first_process(run.check_free, rank, world)  # refused early, nothing changed
    tasks, data, model = build_tasks(cfg), kind.data(cfg), kind.model(cfg, None)
    plan = on_first_process(lambda: claim(run, cfg, command, resume, SEARCH_FILES), rank, world)
    try:
        searched = _load_search(run, cfg, world, strict=False) if plan["searched"] else None
        if searched is None:
            searched = _search(cfg, run, model, tasks, data, plan["checkpoint"], resume, quiet, stop_after,
                               _Voices(progress, talk, warn), rank, world, kind)
            if searched is None:
                return None
        else:
            progress(f"{run.path}: the search has finished; completing the report")
        report = _report(cfg, run, searched, tasks, data, progress, rank, title, kind)
    except BaseException as e:
        raise record_failure(run, e, rank) from (None if isinstance(e, KeyboardInterrupt) else e)
    finally:
        run.release()
    talk("")
    talk(report_table(report))
    talk("\n" + architecture_note(report))
    talk(f"run directory: {run.path}")
    return report


@dataclass
class _Voices:
    """Where process 0 prints: progress lines (silent with ``quiet``), results, and notes on repairs."""

    progress: Callable[..., None]
    talk: Callable[..., None]
    warn: Callable[[str], None]


def _search(cfg: RunConfig, run: RunDir, model: Any, tasks: Mapping[str, Task], data: Any, checkpoint: str | None,
            resume: bool, quiet: bool, stop_after: int | None, voices: _Voices, rank: int,
            world: int, kind: RunKind = AUTOMTL) -> Searched | None:
    """Warm-up, search, derive and fine-tune (from ``checkpoint`` when given); save what the report needs."""
    progress, talk, warn = voices.progress, voices.talk, voices.warn
    search_cfg = replace(cfg.search, quiet=quiet or rank != 0)
    if checkpoint is None and resume:
        warn(f"{run.path}: no checkpoint was saved before it stopped; the search starts again from step 0")
    searcher = kind.searcher(model, tasks, data, search_cfg, checkpoint)
    if checkpoint is not None:
        progress(f"resuming {run.path} after {searcher.steps_done()} steps")
    guard_checkpoints(searcher, run, rank)
    run.start_changes = {"searched": None}  # a search run again makes its files again
    writer = None
    if rank == 0:  # a resumed history ends at its checkpoint: so must the metrics file
        writer = MetricsWriter(run.path, keep=sum(len(v) for v in searcher.history.values()), note=warn,
                               on_first=run.mark_started)
        searcher.sinks.append(writer)
    progress(f"{cfg.backbone.name}: {len(model.choices)} choices x {len(searcher.names)} tasks on {searcher.device}"
             + (f", {world} processes" if world > 1 else ""))
    done = False
    try:
        result = searcher.run(stop_after=stop_after, checkpoint=run / CHECKPOINT,
                              checkpoint_every=cfg.checkpoint_every)
        done = True
    finally:
        if writer is not None:
            writer.close(csv=done)
    if result is None:
        if rank == 0:
            run.write_meta(status="stopped", steps=searcher.steps_done(), pid=None)
        talk(f"stopped after {searcher.steps_done()} steps; checkpoint {run / CHECKPOINT}. Go on with --resume")
        return None
    searched = Searched(result.architecture, result.model, searcher.history, result.metrics, result.losses,
                        str(searcher.device), searcher.world)
    if rank == 0:
        run.mark_started()
        run.put("architecture.json", result.architecture.save, lambda p: Architecture.load(p))
        run.put("model.pt", result.model.save, MultiTaskModel.load)
        run.put_torch("supermodel.pt", kind.state(searcher))
        run.put_text("history.json", json.dumps(searcher.history) + "\n")
        run.put_text("result.json", json.dumps({**kind.results(result), "metrics": result.metrics,
                                                "losses": result.losses, "device": searched.device,
                                                "processes": searched.processes}) + "\n")
        run.write_meta(searched=True, steps=searcher.steps_done())
    return searched


# --- the report -----------------------------------------------------------------------------------------


def _report(cfg: RunConfig, run: RunDir, searched: Searched, tasks: Mapping[str, Task], data: Any, note: Any,
            rank: int, title: str, kind: RunKind = AUTOMTL) -> dict[str, Any]:
    """Train the baselines (each kept in the manifest once trained), measure, draw, write the report."""
    if rank == 0:
        run.mark_started()
    names = list(tasks)
    primary = {t: tasks[t].primary_metric for t in names}
    shape = (1, *cfg.backbone.input_shape)
    rows: list[Row] = []
    trained = dict(run.meta().get("baselines", {}))
    steps = kind.steps(cfg)  # every baseline trains for as many weight steps as the searched model took
    for baseline in cfg.baselines:
        if baseline in trained:
            rows.append(Row(**trained[baseline]))
            continue
        note(f"training the {baseline} baseline{'s' if baseline == 'independent' else ''} ...")
        groups = [[t] for t in names] if baseline == "independent" else [names]
        models, metrics = [], {}
        for group in groups:
            m, ev = kind.baseline(cfg, {t: tasks[t] for t in group}, data, steps)
            models.append(m)
            metrics.update({t: ev[t][primary[t]] for t in group})
        totals = [m.report()["total"] for m in models]
        rows.append(Row(baseline, metrics, sum(t["params"] for t in totals), sum(t["flops"] for t in totals),
                        kind.latency(models, cfg)))
        trained[baseline] = asdict(rows[-1])
        if rank == 0:
            run.write_meta(baselines=trained)
    rep = searched.model.report()
    rows.append(Row("searched", {t: searched.metrics[t][primary[t]] for t in names}, rep["total"]["params"],
                    rep["total"]["flops"], kind.latency([searched.model], cfg)))
    deltas = ({r.name: delta_mtl(r, rows[0], tasks) for r in rows} if len(rows) > 1 else None)
    pictures: dict[str, str] = {}
    if rank == 0:
        from .pictures import render_all

        drawn = render_all(searched.architecture, run / "pictures", history=searched.history)
        pictures = {k: str(Path(v).relative_to(run.path)) for k, v in drawn.items()}
    arch = searched.architecture
    report = {
        "backbone": cfg.backbone.name, "trunk_output": cfg.backbone.trunk_output, "input": list(shape),
        "tasks": primary, "higher_is_better": {t: bool(tasks[t].higher_is_better[primary[t]]) for t in names},
        "rows": [asdict(r) for r in rows], "delta_mtl": deltas, "metrics": searched.metrics,
        "losses": searched.losses, "shared_fraction": arch.shared_fraction(), "architecture": arch.describe(),
        "trivial": arch.trivial(), "baseline_steps": steps, "params_ratio": rep["params_ratio"],
        "flops_ratio": rep["flops_ratio"], "per_task": rep["per_task"], "pictures": pictures,
        "device": searched.device, "processes": searched.processes, "amp": cfg.search.amp,
        "strategy": kind.name,
    }
    report.update(kind.extra(report, searched, cfg))
    if rank == 0:
        run.put_text("report.json", json.dumps(report, indent=1) + "\n")
        markdown = report_markdown(report, title)
        run.put_text("report.md", "\n".join([markdown.rstrip("\n"), *kind.markdown(report)]) + "\n")
        run.write_meta(status="done", error=None, pid=None)
    return report


def _train_baseline(cfg: RunConfig, tasks: Mapping[str, Task], data: Any, steps: int
                    ) -> tuple[MultiTaskModel, dict[str, Any]]:
    """An all-shared model of ``tasks`` trained from scratch for ``steps`` weight steps."""
    model = build_model(cfg, list(tasks))
    s = Searcher(model, tasks, data, replace(cfg.search, finetune_steps=steps, quiet=True))
    derived = s.finetune(model.uniform_architecture("shared"), steps=steps, from_="scratch")
    return derived, s.validate(derived)["metrics"]


def _load_search(run: RunDir, cfg: RunConfig, world: int, strict: bool) -> Searched | None:
    """What a finished search left in the run (each file checked against its hash); ``None`` when the
    search has not finished, or (``strict=False``) when a file is damaged: a resume makes them again."""
    meta = run.meta()
    if not meta.get("searched"):
        if strict:
            raise RunError(f"{run.path}: the search has not finished; "
                           f"`automtl search {run / 'config.yaml'} --out {run.path} --resume` goes on")
        return None
    try:
        files = {name: run.verified(name) for name in SEARCH_FILES}
    except RunError:
        if strict:
            raise
        return None
    result = json.loads(files["result.json"].read_text())
    device = dist_utils.local_device(cfg.search.device, world)
    return Searched(Architecture.load(files["architecture.json"]), MultiTaskModel.load(files["model.pt"]).to(device),
                    json.loads(files["history.json"].read_text()), result["metrics"], result["losses"],
                    result["device"], int(result["processes"]))


def complete_report(path: str | os.PathLike[str], title: str = "automtl search",
                    note: Callable[[str], None] = _stderr_note) -> dict[str, Any]:
    """Finish the report of a run whose search finished but whose report did not (holding the lock):
    baselines, latency, pictures, ``report.json``/``.md``; the search is not run again."""
    run = RunDir(path)
    run.acquire()
    try:
        cfg = run.config()
        kind = run_kind(cfg.strategy)
        searched = _load_search(run, cfg, 1, strict=True)
        assert searched is not None
        note(f"{run.path}: completing the report from the finished search (baselines, latency, pictures)")
        if not (run / "metrics.jsonl").is_file():
            note(f"{run / 'metrics.jsonl'}: missing; its records are lost (history.json holds them)")
        elif not (run / "metrics.csv").is_file():
            write_csv(run / "metrics.jsonl", run / "metrics.csv")
        report = _report(cfg, run, searched, build_tasks(cfg), kind.data(cfg), _silent, 0, title, kind)
    except BaseException as e:
        if isinstance(e, RunError):
            raise
        reason = os_error_line(e) if isinstance(e, OSError) else one_line(e)
        run.write_meta(status="failed", error=reason, pid=None)
        raise one_line_error(e, reason, f"{run.path}: status 'failed'; fix the cause, then `automtl report "
                                         f"{run.path}` again") from e
    finally:
        run.release()
    return report


# --- reading a finished run ---------------------------------------------------------------------------


def load_report(path: str | os.PathLike[str], complete: bool = True) -> dict[str, Any]:
    """The ``report.json`` of a finished run; with ``complete``, a run whose search finished but whose
    report failed gets its report now (:func:`complete_report`). ``RunError`` when there is none."""
    run = RunDir(path)
    meta = run.meta()
    if not (run / "report.json").exists() and complete and meta.get("searched"):
        return complete_report(path)
    file = run.require("report.json", "the run has not finished (`automtl search CONFIG --out RUN --resume`)")
    return json.loads(file.read_text())


def load_history(run: RunDir) -> dict[str, list[dict[str, Any]]] | None:
    file = run / "history.json"
    return json.loads(run.verified("history.json").read_text()) if file.is_file() else None


def searcher_for(run: RunDir, quiet: bool = True) -> Searcher:
    """A searcher over the run's data holding its searched supermodel (weights and logits)."""
    cfg = run.config()
    if cfg.strategy == "slimda":
        raise RunError(run.slimda_line("architecture.json"))
    if cfg.strategy != "automtl":
        raise RunError(f"{run.path}: a {cfg.strategy} run; `automtl derive` re-derives an automtl search's policy "
                       f"(this run's architecture is {run / 'architecture.json'}, its model {run / 'model.pt'})")
    weights = run.require("supermodel.pt", "the search has not finished (`automtl search CONFIG --out RUN --resume`)")
    model = build_model(cfg)
    searcher = Searcher(model, build_tasks(cfg), build_dataset(cfg), replace(cfg.search, quiet=quiet))
    try:
        model.load_state_dict(torch.load(weights, map_location=searcher.device, weights_only=True))
    except RuntimeError as e:
        raise RunError(f"{weights}: does not fit the model of {run / 'config.yaml'}: {str(e).splitlines()[0]}") from e
    return searcher


def derive_run(path: str | os.PathLike[str], sample: int = 0, out: str | os.PathLike[str] | None = None
               ) -> tuple[Architecture, list[dict[str, Any]], Searcher]:
    """Derive again from a run's searched policy: the argmax, or (``sample=k``) the best on validation of
    the argmax and ``k`` samples. Returns the architecture, the candidates' records and the searcher.

    With ``out``, holds the run's lock while deriving and writes the architecture there (never over
    an existing file)."""
    run = RunDir(path)
    if out is None:
        searcher = searcher_for(run)
        arch = searcher.derive("sample" if sample else "argmax", k=max(sample, 1))
        return arch, list(searcher.history["derive"]), searcher
    out = Path(out)
    if out.exists():
        raise RunError(f"{out}: exists; nothing was changed. Choose another --out")
    try:
        run.acquire()
    except NotWritable:  # a read-only run (an archive, say) can still be derived from, into another folder
        if out.resolve().is_relative_to(run.path.resolve()):
            raise
    try:
        searcher = searcher_for(run)
        arch = searcher.derive("sample" if sample else "argmax", k=max(sample, 1))
        out.parent.mkdir(parents=True, exist_ok=True)
        with StagedFile(out) as staged:
            arch.save(staged.path)
            staged.seal(Architecture.load)
            staged.commit()
    except OSError as e:
        raise RunError(f"{os_error_line(e)}; nothing was derived") from None
    finally:
        run.release()
    return arch, list(searcher.history["derive"]), searcher
