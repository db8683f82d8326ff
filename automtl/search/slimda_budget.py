"""SlimDA's architecture adaptation: the width configuration per FLOPs budget, chosen by UPEM.

:func:`search_budget` samples width configurations of the bank under a FLOPs budget (the exact
count of the compiler on the thin graph, :meth:`~automtl.model.width.SlimClassifier.flops`): each
group's width is drawn from the width list, while the network is over the budget one random group
steps down to the next smaller width, then random groups step up while it still fits (so every
candidate uses the budget: no group can widen without exceeding it). Every candidate's batch norm is recalibrated on the
target images, and its UPEM (discrepancy of its target predictions from the largest network's,
:func:`~automtl.search.slimda_losses.upem`) is computed; the smallest UPEM wins. No target label
is read.

:func:`save_bank` / :func:`load_bank` write and read the bank a SlimDA run leaves
(``slimda.pt``); ``automtl derive RUN --budget B`` (:func:`automtl.app.slimda.derive_budget`) writes the
chosen network as a plain compact model (``torch.save``'d module and ONNX), its UPEM, FLOPs and latency.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..model.width import SlimClassifier, SlimmableNet, Widths
from .slimda_losses import upem

__all__ = ["load_bank", "sample_under_budget", "save_bank", "search_budget"]


@torch.no_grad()
def _logits(model: SlimClassifier, widths: Widths, images: Sequence[torch.Tensor]) -> torch.Tensor:
    model.eval()
    model.trunk.calibrate(widths, images)
    return torch.cat([model(x)[model.task_names[0]] for x in images])


def sample_under_budget(model: SlimClassifier, widths: Sequence[float], limit: float, rng: random.Random) -> Widths:
    """A random configuration within ``limit`` FLOPs that no single group can widen: drawn, stepped down, filled."""
    ladder = sorted(widths)
    cfg = model.trunk.random(ladder, rng)
    while model.flops(cfg) > limit:
        wide = [g for g, w in cfg.items() if w > ladder[0]]
        if not wide:
            break
        g = rng.choice(wide)
        cfg[g] = ladder[ladder.index(cfg[g]) - 1]
    grown = True
    while grown:  # then fill the budget: widen random groups one step while the network still fits
        grown = False
        for g in rng.sample(list(cfg), len(cfg)):
            if cfg[g] < ladder[-1]:
                wider = {**cfg, g: ladder[ladder.index(cfg[g]) + 1]}
                if model.flops(wider) <= limit:
                    cfg, grown = wider, True
    return cfg


def search_budget(model: SlimClassifier, widths: Sequence[float], images: Sequence[torch.Tensor], budget: float,
                  candidates: int = 64, seed: int = 0) -> dict[str, Any]:
    """The configuration with the best (smallest) UPEM among ``candidates`` under ``budget`` x the
    largest network's FLOPs; returns it with its FLOPs, ratio, UPEM and every candidate scored."""
    if not isinstance(budget, int | float) or not 0 < budget <= 1:
        raise ValueError(f"--budget must be a fraction of the largest network's FLOPs in (0, 1], got {budget!r}")
    trunk: SlimmableNet = model.trunk
    full = trunk.uniform(max(widths))
    full_flops = model.flops(full)
    limit = budget * full_flops
    smallest = trunk.uniform(min(widths))
    if model.flops(smallest) > limit:
        ratio = model.flops(smallest) / full_flops
        raise ValueError(f"budget {budget}: the smallest network (width {min(widths)} everywhere) needs {ratio:.4f} of "
                         f"the largest network's FLOPs; ask for a budget of at least {ratio:.4f}")
    rng = random.Random(seed)
    pool: dict[tuple[tuple[str, float], ...], Widths] = {}
    for w in sorted(widths, reverse=True):  # the widest uniform network that fits is always a candidate
        if model.flops(trunk.uniform(w)) <= limit:
            pool[tuple(sorted(trunk.uniform(w).items()))] = trunk.uniform(w)
            break
    tries = 0
    while len(pool) < candidates and tries < 20 * candidates:
        cfg = sample_under_budget(model, widths, limit, rng)
        pool.setdefault(tuple(sorted(cfg.items())), cfg)
        tries += 1
    anchor = _logits(model, full, images)
    scored = []
    for cfg in pool.values():
        flops = model.flops(cfg)
        scored.append({"widths": cfg, "flops": flops, "flops_ratio": flops / full_flops,
                       "upem": upem(_logits(model, cfg, images), anchor)})
    best = min(scored, key=lambda r: (r["upem"], -r["flops"]))
    return {**best, "budget": budget, "full_flops": full_flops, "candidates": scored}


# --- the bank on disk ------------------------------------------------------------------------------
def save_bank(model: SlimClassifier, config: Any, images: Sequence[torch.Tensor], path: str | os.PathLike[str]) -> Path:
    """Write the bank (graph, weights, heads), its SlimDA config and the target calibration images."""
    from .slimda import BANK_FORMAT

    path = Path(path)
    if path.suffix != ".pt":
        path = path / "slimda.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": BANK_FORMAT,
        "graph": model.trunk.graph.copy(tensors=False),
        "num_classes": model.num_classes,
        "task": model.task_names[0],
        "deploy": model.deploy,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": asdict(config) if not isinstance(config, Mapping) else dict(config),
        "images": [x.detach().cpu() for x in images],
    }
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(state, tmp)
    except Exception as exc:  # noqa: BLE001 - pickling a user's opaque operator may fail in any way
        tmp.unlink(missing_ok=True)
        raise ValueError(f"{path}: the bank could not be saved ({type(exc).__name__}: {exc}); a backbone with "
                         "opaque Python calls cannot be pickled") from None
    os.replace(tmp, path)
    return path


def load_bank(path: str | os.PathLike[str]) -> tuple[SlimClassifier, dict[str, Any], list[torch.Tensor]]:
    """Read :func:`save_bank`'s file (or the ``slimda.pt`` of a run folder): the bank, its config, the images."""
    from .slimda import BANK_FORMAT

    path = Path(path)
    if path.is_dir():
        path = path / "slimda.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no SlimDA bank here; a slimda run writes one (SlimDASearcher.save_bank)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - a damaged file may fail in any way
        raise ValueError(f"{path}: not a readable SlimDA bank ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != BANK_FORMAT:
        raise ValueError(f"{path}: not a SlimDA bank of format {BANK_FORMAT!r}")
    model = SlimClassifier(SlimmableNet(state["graph"]), state["num_classes"], state["task"], state["deploy"])
    model.load_state_dict(state["state_dict"])
    return model.eval(), state["config"], state["images"]
