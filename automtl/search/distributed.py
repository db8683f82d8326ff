"""Data-parallel search across processes (``torchrun``), for :class:`~automtl.search.searcher.Searcher`.

>>> torchrun --nproc_per_node 2 -m automtl search run.yaml      # gloo on CPU, NCCL on CUDA

Every process holds the whole supermodel and draws the same random numbers (same seed), so the
Gumbel noise, the data order and the policy are the same everywhere. Each process takes an equal
share of every global batch; after each backward the gradients (of the weights, the logits or the
fine-tuned model) are averaged over the processes, which makes each step the 1-process step on
the global batch, and the buffers (BN running statistics) are copied from process 0, as
``DistributedDataParallel`` does. Batch normalisation normalises each share with its own batch
statistics (as DDP without SyncBatchNorm). Validation runs on the whole split in every process,
so every process reaches the same decisions; only process 0 writes files and draws progress bars.

The collectives are plain ``torch.distributed`` calls (not the ``DistributedDataParallel``
wrapper) because the supermodel's forward takes a mode and a temperature, and a step trains only
the weights or only the logits: averaging exactly the gradients that exist is simpler and exact.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["ShardedBatches", "ShardedSampler", "average_gradients", "average_tensor", "broadcast_buffers",
           "exit_process", "init_from_env", "leave",
           "local_device", "mean_losses", "mean_scalar", "rank_and_world"]


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised default process group, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env() -> bool:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1 in the environment).

    NCCL when CUDA is available, else gloo. Returns whether this call initialised a group.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def leave() -> None:
    """Leave the process group: wait for every process first (a barrier), so none tears down its
    connections while another still uses them (gloo then aborts a process at exit)."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def exit_process(code: int) -> None:
    """End a data-parallel process now, after flushing its output.

    torch's gloo teardown can abort a process at interpreter exit, after all of its work is done
    ("terminate called without an active exception": a C++ thread still joinable when destroyed);
    ``os._exit`` skips that teardown, so the exit status is the command's own.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def local_device(device: str | torch.device, world: int) -> torch.device:
    """``device``, with a CUDA device without an index mapped to this process's GPU (``LOCAL_RANK``)."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and world > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def _comm_device() -> torch.device:
    """Where small bookkeeping tensors must live for the backend (NCCL reduces CUDA tensors only)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _share(n: int, rank: int, world: int) -> slice:
    """Rank's contiguous part of ``n`` items (sizes differ by at most one when ``world`` does not divide ``n``)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


class ShardedSampler:
    """Yields this process's share of each batch of index lists ``batches`` yields (a batch sampler)."""

    def __init__(self, batches: Iterable[list[int]], rank: int, world: int) -> None:
        self.batches, self.rank, self.world = batches, rank, world

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            yield list(batch)[_share(len(batch), self.rank, self.world)]

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]


def _slice(value: Any, rank: int, world: int) -> Any:
    if isinstance(value, torch.Tensor):
        return value[_share(value.shape[0], rank, world)] if value.dim() else value
    if isinstance(value, Mapping):
        return {k: _slice(v, rank, world) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(_slice(v, rank, world) for v in value)
    return value


class ShardedBatches:
    """This process's share of every ready batch of an iterable (a ``DataLoader`` given as a split)."""

    def __init__(self, source: Iterable[Any], rank: int, world: int) -> None:
        self.source, self.rank, self.world = source, rank, world
        self.generator = getattr(source, "generator", None)  # so a checkpoint keeps the data order

    def __iter__(self) -> Iterator[Any]:
        for batch in self.source:
            yield _slice(batch, self.rank, self.world)

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]


def average_gradients(params: Sequence[nn.Parameter]) -> None:
    """Average the existing gradients of ``params`` over the processes, in one flat all-reduce.

    Every process must hold gradients for the same parameters (they draw the same Gumbel noise);
    a mismatch raises ``RuntimeError`` in all of them rather than hanging.
    """
    grads = [p.grad for p in params if p.grad is not None]
    world = dist.get_world_size()
    count = torch.tensor([len(grads), -len(grads)], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    if int(count[0]) != -int(count[1]):
        raise RuntimeError(f"distributed step: the processes hold gradients for different parameters "
                           f"({-int(count[1])} to {int(count[0])}); are they running the same seed and config?")
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def average_tensor(value: torch.Tensor) -> torch.Tensor:
    """``value`` averaged over the processes (a new tensor; ``value`` itself in one process)."""
    if rank_and_world()[1] == 1:
        return value
    out = value.detach().clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()


def broadcast_buffers(module: nn.Module) -> None:
    """Copy every buffer (BN statistics, counters) from process 0, one broadcast per dtype and device."""
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for b in module.buffers():
        if b.numel():
            groups.setdefault((b.dtype, b.device), []).append(b)
    for buffers in groups.values():
        flat = torch.cat([b.reshape(-1) for b in buffers])
        dist.broadcast(flat, src=0)
        offset = 0
        for b in buffers:
            b.copy_(flat[offset:offset + b.numel()].view_as(b))
            offset += b.numel()


def mean_losses(losses: Mapping[str, torch.Tensor | None]) -> dict[str, float | None]:
    """Per-task losses as floats, averaged over the processes that have one (``None`` where none has)."""
    if rank_and_world()[1] == 1:
        return {t: None if v is None else float(v.detach()) for t, v in losses.items()}
    names = list(losses)
    values = torch.zeros(2 * len(names), dtype=torch.float64, device=_comm_device())
    for i, t in enumerate(names):
        v = losses[t]
        if v is not None:
            values[i], values[len(names) + i] = float(v.detach()), 1.0
    dist.all_reduce(values)
    out: dict[str, float | None] = {}
    for i, t in enumerate(names):
        n = float(values[len(names) + i])
        out[t] = float(values[i]) / n if n else None
    return out


def mean_scalar(value: torch.Tensor) -> float:
    """A scalar as a float, averaged over the processes."""
    if rank_and_world()[1] == 1:
        return float(value.detach())
    t = torch.tensor([float(value.detach())], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return float(t[0]) / dist.get_world_size()
