"""``automtl search CONFIG`` for a config whose ``search.strategy`` is ``slimda``.

The config names one classification task and a data factory returning ``(source, target, test)``
datasets, for example the built-in domain shift::

    backbone: {name: my_pkg.nets:small_cnn, input_shape: [1, 8, 8]}   # or a zoo name / file
    tasks: {digit: {kind: classification, num_classes: 10}}
    data: {factory: "automtl.train.domain_shift:domain_shift_digits", n_source: 3000}
    search: {strategy: slimda, steps: 600, widths: [0.125, 0.25, 0.5, 0.75, 1.0], model_batch: 4}

The run folder gets ``config.yaml``, ``checkpoint.pt`` (every ``checkpoint_every`` steps and at a
``--stop-after``; ``--resume`` goes on from it exactly), ``history.json``, ``slimda.pt`` (the bank,
for ``automtl derive RUN --budget B``) and ``result.json`` (target test accuracy and FLOPs of the
largest and smallest networks).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..train.tasks import Classification
from .config import RunConfig, build_dataset, build_tasks
from .config.settings import dump_config

CHECKPOINT = "checkpoint.pt"


def run_slimda(cfg: RunConfig, out: str | os.PathLike[str], *, resume: bool = False, quiet: bool = False,
               stop_after: int | None = None, say: Any = print) -> dict[str, Any] | None:
    """Train the SlimDA bank of ``cfg`` into the folder ``out``; returns the result (None when stopped)."""
    from ..model.width import build_slim_classifier
    from ..search.checkpoint import load
    from ..search.slimda import SlimDAConfig, SlimDASearcher

    folder = Path(out)
    if not resume and folder.exists() and any(folder.iterdir()):
        raise ValueError(f"{folder}: holds files; choose a new --out (or --resume a stopped slimda run)")
    if resume and not (folder / CHECKPOINT).is_file():
        raise FileNotFoundError(f"{folder / CHECKPOINT}: no checkpoint to resume from")
    tasks = build_tasks(cfg)
    (name, task), *more = tasks.items()
    if more or not isinstance(task, Classification):
        raise ValueError(f"the slimda strategy adapts one classification task; the config has {list(tasks)}")
    data = build_dataset(cfg)
    search: SlimDAConfig = cfg.search  # type: ignore[assignment]
    b = cfg.backbone
    model = build_slim_classifier(b.name, task.num_classes, input_shape=tuple(b.input_shape),
                                  trunk_output=b.trunk_output, task=name)
    searcher = SlimDASearcher(model, {name: task}, data, search)
    folder.mkdir(parents=True, exist_ok=True)
    if resume:
        searcher.load_state_dict(load(folder / CHECKPOINT))
        if not quiet:
            say(f"resuming {folder} after {searcher.steps_done()} steps")
    elif searcher.rank == 0:  # under torchrun, process 0 writes the files (checkpoints too)
        dump_config(cfg, folder / "config.yaml")
    done = searcher.run(stop_after=stop_after, checkpoint=folder / CHECKPOINT, every=cfg.checkpoint_every)
    if searcher.rank == 0:
        (folder / "history.json").write_text(json.dumps(searcher.history) + "\n")
    if not done:
        say(f"stopped after {searcher.steps_done()} steps; checkpoint {folder / CHECKPOINT}. Go on with --resume")
        return None
    trunk = model.trunk
    result: dict[str, Any] = {"method": search.method, "networks": {}}
    ends = {"largest": trunk.uniform(max(search.widths)), "smallest": trunk.uniform(min(search.widths))}
    for label, widths in ends.items():
        result["networks"][label] = {"target_accuracy": searcher.accuracy(widths), "flops": model.flops(widths)}
    if searcher.rank == 0:
        searcher.save_bank(folder)
        (folder / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    big, small = result["networks"]["largest"], result["networks"]["smallest"]
    say(f"{search.method}: target accuracy {100 * big['target_accuracy']:.1f}% (largest, {big['flops']:,} FLOPs), "
        f"{100 * small['target_accuracy']:.1f}% (smallest, {small['flops']:,} FLOPs); bank {folder / 'slimda.pt'}; "
        f"`automtl derive {folder} --budget 0.25` picks a network per budget")
    return result
