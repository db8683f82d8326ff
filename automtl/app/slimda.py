"""``automtl search CONFIG`` for a ``slimda`` config, and ``automtl derive RUN --budget B``: SlimDA's run folder.

The config names one classification task and a data factory returning ``(source, target, test)``
datasets, for example the built-in domain shift::

    backbone: {name: my_pkg.nets:small_cnn, input_shape: [1, 8, 8]}   # or a zoo name / file
    tasks: {digit: {kind: classification, num_classes: 10}}
    data: {factory: "automtl.train.domain_shift:domain_shift_digits", n_source: 3000}
    search: {strategy: slimda, steps: 600, widths: [0.125, 0.25, 0.5, 0.75, 1.0], model_batch: 4}

The run folder is a run directory like the AutoMTL search's (:class:`~automtl.app.rundir.RunDir`):
the manifest ``automtl-run.json`` (status running / stopped / failed / done, the failure's reason,
the sha256 of every file), the lock ``automtl-run.lock`` while a command writes it, ``config.yaml``,
``checkpoint.pt`` / ``checkpoint.prev.pt`` (every ``checkpoint_every`` steps and at a
``--stop-after``; ``--resume`` goes on from it exactly, with the same config only), ``history.json``,
``slimda.pt`` (the bank, for ``automtl derive RUN --budget B``) and ``result.json`` (target test
accuracy and FLOPs of the largest and smallest networks). A new run never writes into a folder
that holds files; a command failing before its first step leaves the folder as it found it.

``automtl derive RUN --budget B`` checks ``slimda.pt`` against the manifest, holds the lock and writes
``RUN/derived/slim-B.{pt,onnx,json}`` (never over existing files). A bank saved from Python
(:meth:`~automtl.search.slimda.SlimDASearcher.save_bank`, no manifest) is derived from as it is.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..search import distributed as dist_utils
from ..train.tasks import Classification
from .config import RunConfig, build_dataset, build_tasks
from .integrity import StagedFile, os_error_line
from .run_life import claim, guard_checkpoints, on_first_process, record_failure
from .rundir import CHECKPOINT, META, NotWritable, RunDir, RunError

BANK = "slimda.pt"


def run_slimda(cfg: RunConfig, out: str | os.PathLike[str], *, resume: bool = False, quiet: bool = False,
               stop_after: int | None = None, say: Any = print) -> dict[str, Any] | None:
    """Train the SlimDA bank of ``cfg`` into the run directory ``out``; returns the result (None when stopped)."""
    from ..model.width import build_slim_classifier
    from ..search.checkpoint import load
    from ..search.slimda import SlimDAConfig, SlimDASearcher

    rank, world = dist_utils.rank_and_world()
    run = RunDir(out)
    if not resume:
        on_first_process(run.check_free, rank, world)  # refused early, nothing changed
    tasks = build_tasks(cfg)
    (name, task), *more = tasks.items()
    if more or not isinstance(task, Classification):
        raise ValueError(f"the slimda strategy adapts one classification task; the config has {list(tasks)}")
    data = build_dataset(cfg)
    search: SlimDAConfig = cfg.search  # type: ignore[assignment]
    b = cfg.backbone
    with torch.random.fork_rng(devices=[]):  # a config always builds the same initial bank (as build_model does)
        torch.manual_seed(cfg.seed)
        model = build_slim_classifier(b.name, task.num_classes, input_shape=tuple(b.input_shape),
                                      trunk_output=b.trunk_output, task=name)
    checkpoint = on_first_process(lambda: claim(run, cfg, "search", resume), rank, world)["checkpoint"]
    try:
        searcher = SlimDASearcher(model, {name: task}, data, replace(search, quiet=search.quiet or quiet or rank != 0))
        if checkpoint is not None:
            searcher.load_state_dict(load(checkpoint))
            if not quiet:
                say(f"resuming {run.path} after {searcher.steps_done()} steps")
        guard_checkpoints(searcher, run, rank)  # type: ignore[arg-type]
        done = searcher.run(stop_after=stop_after, checkpoint=run / CHECKPOINT, every=cfg.checkpoint_every)
        if rank == 0:
            run.mark_started()
            run.put_text("history.json", json.dumps(searcher.history) + "\n")
        if not done:
            if rank == 0:
                run.write_meta(status="stopped", steps=searcher.steps_done(), pid=None)
            say(f"stopped after {searcher.steps_done()} steps; checkpoint {run / CHECKPOINT}. Go on with --resume")
            return None
        result = _result(searcher, model, search)
        if rank == 0:
            _write_bank(run, searcher)
            run.put_text("result.json", json.dumps(result, indent=1) + "\n")
            run.write_meta(status="done", steps=searcher.steps_done(), error=None, pid=None)
    except BaseException as e:
        raise record_failure(run, e, rank) from (None if isinstance(e, KeyboardInterrupt) else e)
    finally:
        run.release()
    big, small = result["networks"]["largest"], result["networks"]["smallest"]
    say(f"{search.method}: target accuracy {100 * big['target_accuracy']:.1f}% (largest, {big['flops']:,} FLOPs), "
        f"{100 * small['target_accuracy']:.1f}% (smallest, {small['flops']:,} FLOPs); bank {run / BANK}; "
        f"`automtl derive {run.path} --budget 0.25` picks a network per budget")
    return result


def _result(searcher: Any, model: Any, search: Any) -> dict[str, Any]:
    """Target test accuracy and FLOPs of the largest and the smallest network (labels read for evaluation only)."""
    trunk = model.trunk
    result: dict[str, Any] = {"method": search.method, "networks": {}}
    ends = {"largest": trunk.uniform(max(search.widths)), "smallest": trunk.uniform(min(search.widths))}
    for label, widths in ends.items():
        result["networks"][label] = {"target_accuracy": searcher.accuracy(widths), "flops": model.flops(widths)}
    return result


def _write_bank(run: RunDir, searcher: Any) -> None:
    from ..search.slimda_budget import load_bank

    run.put(BANK, searcher.save_bank, load_bank)


# --- derive --budget ----------------------------------------------------------------------------------
def derive_budget(run: str | os.PathLike[str], budget: float, out: str | os.PathLike[str] | None = None,
                  onnx: bool = True, candidates: int | None = None) -> dict[str, Any]:
    """The network of ``run``'s bank chosen by UPEM for ``budget``, written as a plain compact model.

    ``run`` is a SlimDA run directory (its bank checked against the manifest, its lock held while
    writing), a folder holding ``slimda.pt``, or the bank file itself. Writes ``<out>/slim-<budget>.pt``
    (the module, ``torch.load(weights_only=False)``), ``.onnx`` (checked with onnxruntime) and ``.json``
    (widths, FLOPs, UPEM, latency), never over existing files; returns that record.
    """
    from ..search.slimda_budget import load_bank

    path = Path(run)
    managed = path.is_dir() and (path / META).is_file()
    folder = Path(out) if out is not None else (path if path.is_dir() else path.parent) / "derived"
    name = f"slim-{budget:g}"
    files = {ext: folder / f"{name}.{ext}" for ext in ("pt", "onnx", "json")}
    taken = [str(f) for ext, f in files.items() if f.exists() and (onnx or ext != "onnx")]
    if taken:
        raise RunError(f"{taken[0]}: exists; nothing was changed. Choose another --out (or remove the old files)")
    rundir = RunDir(path) if managed else None
    if rundir is not None:
        bank_file = rundir.require(BANK, "the SlimDA run has not finished (`automtl search CONFIG --out RUN "
                                         "--resume`)")
        try:
            rundir.acquire()
        except NotWritable:  # a read-only run can still be derived from, into another folder
            if folder.resolve().is_relative_to(path.resolve()):
                raise
    else:
        bank_file = path
    try:
        model, config, images = load_bank(bank_file)
        record = _derive(model, config, images, budget, files, onnx, candidates)
    except OSError as e:
        raise RunError(f"{os_error_line(e)}; nothing was derived") from None
    finally:
        if rundir is not None:
            rundir.release()
    return record


def _derive(model: Any, config: dict[str, Any], images: list[torch.Tensor], budget: float, files: dict[str, Path],
            onnx: bool, candidates: int | None) -> dict[str, Any]:
    from ..model.latency import measure_latency
    from ..search.slimda_budget import search_budget
    from .export import check_onnx, export_onnx

    widths = config.get("widths", [0.25, 0.5, 0.75, 1.0])
    found = search_budget(model, widths, images, budget, candidates or config.get("budget_candidates", 64),
                          seed=config.get("seed", 0))
    model.trunk.calibrate(found["widths"], images)
    compact = model.derive(found["widths"])
    shape = tuple(images[0].shape[1:])
    files["pt"].parent.mkdir(parents=True, exist_ok=True)
    _staged(files["pt"], lambda p: torch.save(compact, p), lambda p: torch.load(p, weights_only=False))
    record = {k: found[k] for k in ("widths", "flops", "flops_ratio", "upem", "budget", "full_flops")}
    record.update(params=sum(p.numel() for p in compact.parameters()),
                  latency_ms=measure_latency(compact, (1, *shape), rounds=30),
                  candidates=len(found["candidates"]), model=str(files["pt"]))
    if onnx:
        _staged(files["onnx"], lambda p: export_onnx(compact, p, shape))
        record["onnx"] = str(files["onnx"])
        record["onnx_max_abs_diff"] = max(check_onnx(files["onnx"], compact, images[0][:2]).values())
    _staged(files["json"], lambda p: p.write_text(json.dumps(record, indent=1) + "\n"), lambda p: json.loads(
        p.read_text()))
    return record


def _staged(dest: Path, write: Any, check: Any = None) -> None:
    """Write ``dest`` beside its place, check it, then move it in (a killed process leaves no half file)."""
    with StagedFile(dest) as staged:
        write(staged.path)
        staged.seal(check)
        staged.commit()
