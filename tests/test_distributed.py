"""Data-parallel search (:mod:`automtl.search.distributed`): two gloo processes on the CPU.

The 2-process run must finish with identical logits, weights and buffers in both processes and,
on a network without batch norm (whose batch statistics depend on the share of the batch), match
the 1-process run on the same global batch to float tolerance: the same Gumbel noise, data order,
averaged gradients, losses and derived architecture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from test_search import Labelled, Plain
from torch import nn

from automtl.model.supermodel import build
from automtl.search import distributed
from automtl.search.distributed import exit_process, leave
from automtl.search.searcher import SearchConfig, Searcher
from automtl.train.tasks import Segmentation

SHIFTS = {"a": 0, "b": 1}
CONFIG = dict(warmup_steps=3, search_iterations=3, weight_steps_per_iter=1, policy_steps_per_iter=1,
              finetune_steps=3, batch_size=8, eval_batches=1, tau_interval=1, tau_decay=0.5, quiet=True, seed=5,
              policy_lr=0.05)


class Normed(nn.Module):
    """Convolutions with batch norm: the processes see different batch statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def run_search(backbone: str) -> dict[str, Any]:
    """A tiny search; returns its final state (supermodel, logits, fine-tuned model, history)."""
    torch.manual_seed(0)
    net = Plain(layers=3) if backbone == "plain" else Normed()
    model = build(net, {t: nn.Identity() for t in SHIFTS}, input_shape=(3, 8, 8), skip=True)
    tasks = {t: Segmentation(t, 3) for t in SHIFTS}
    s = Searcher(model, tasks, Labelled(64, SHIFTS, seed=1), SearchConfig(**CONFIG))
    result = s.run()
    return {"model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "logits": model.policy.logits.detach().clone(),
            "derived": {k: v.detach().clone() for k, v in result.model.state_dict().items()},
            "architecture": result.architecture.to_dict(),
            "totals": [r["total"] for stage in ("warmup", "search", "finetune") for r in s.history[stage]],
            "world": s.world}


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save({name: run_search(name) for name in ("plain", "normed")}, f"{out}/rank{rank}.pt")
    finally:
        leave()
    exit_process(0)  # past torch's gloo teardown, which can abort a finished process at exit


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, str(folder / "init"), str(folder)), nprocs=2, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(2)]


def _close(a: Any, b: Any, where: str, atol: float) -> None:
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        if a.is_floating_point():
            assert torch.allclose(a, b, atol=atol, rtol=1e-4), f"{where}: max diff {(a - b).abs().max():.3g}"
        else:
            assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _close(a[k], b[k], f"{where}.{k}", atol)
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{where}[{i}]", atol)
    elif isinstance(a, float):
        assert abs(a - b) <= atol + 1e-4 * abs(b), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("backbone", ["plain", "normed"])
def test_all_processes_end_identical(ranks: list[dict[str, Any]], backbone: str) -> None:
    a, b = ranks[0][backbone], ranks[1][backbone]
    assert a["world"] == b["world"] == 2
    for key in ("model", "logits", "derived"):
        _close(a[key], b[key], key, atol=0.0)  # bit for bit: averaged gradients, broadcast buffers
    assert a["architecture"] == b["architecture"] and a["totals"] == b["totals"]


def test_two_processes_equal_one_on_the_global_batch(ranks: list[dict[str, Any]]) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = run_search("plain")
    finally:
        torch.set_num_threads(threads)
    two = ranks[0]["plain"]
    assert one["world"] == 1
    assert one["architecture"] == two["architecture"]
    for key in ("logits", "model", "derived", "totals"):
        _close(two[key], one[key], key, atol=1e-5)
    # the logits moved: the comparison is about a real search, not the initial state
    assert one["logits"].abs().max() > 1e-3


def test_sharding_splits_every_batch_evenly() -> None:
    batches = [list(range(8)), list(range(8, 13))]
    shares = [list(distributed.ShardedSampler(batches, r, 2)) for r in range(2)]
    assert shares[0] == [[0, 1, 2, 3], [8, 9, 10]] and shares[1] == [[4, 5, 6, 7], [11, 12]]
    x = torch.arange(6).view(6, 1)
    ready = [(x, {"a": x.view(-1), "b": None})]
    parts = [next(iter(distributed.ShardedBatches(ready, r, 3))) for r in range(3)]
    assert [p[0].view(-1).tolist() for p in parts] == [[0, 1], [2, 3], [4, 5]]
    assert parts[2][1]["a"].tolist() == [4, 5] and parts[2][1]["b"] is None


def test_batch_must_divide_among_processes(tmp_path: Path) -> None:
    """A batch size the processes cannot share equally is refused before any step."""
    mp.spawn(_refuse_odd_batch, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    messages = [(tmp_path / f"err{r}.txt").read_text() for r in range(2)]
    assert all("batch_size 7 must be divisible by the 2 processes" in m for m in messages), messages


def _refuse_odd_batch(rank: int, init_file: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model = build(Plain(layers=2), {t: nn.Identity() for t in SHIFTS}, input_shape=(3, 8, 8))
        try:
            Searcher(model, {t: Segmentation(t, 3) for t in SHIFTS}, Labelled(16, SHIFTS),
                     SearchConfig(**{**CONFIG, "batch_size": 7}))
        except ValueError as e:
            Path(out, f"err{rank}.txt").write_text(str(e))
    finally:
        leave()
    exit_process(0)  # past torch's gloo teardown, which can abort a finished process at exit
