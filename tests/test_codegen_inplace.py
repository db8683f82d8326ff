"""Codegen emits activations in place where eager code would (and only where that is safe)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import automtl
from automtl.compiler.codegen import codegen


class Mixed(nn.Module):
    """Each activation here is a case: fresh and dead (in place), shared, after a sigmoid, an output."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = F.relu(self.bn(self.c1(x)))  # in place: a BN output nothing else reads
        b = self.c2(a)
        c = F.relu6(b) + b  # b is read twice: not in place
        d = F.relu(torch.sigmoid(c))  # a sigmoid's backward reads its output: not in place
        e = F.leaky_relu(d + a, 0.2)  # a sum nothing else reads: in place
        f = self.fc(e.mean((2, 3)))
        return F.relu(f), f  # f is an output: not in place


def _calls(gm: torch.fx.GraphModule) -> dict[str, bool]:
    return {n.name: bool(n.kwargs.get("inplace")) for n in gm.graph.nodes
            if n.op == "call_function" and "relu" in n.name}


def test_in_place_exactly_where_safe() -> None:
    gm = codegen(automtl.compile(Mixed(), (2, 3, 8, 8)))
    flags = _calls(gm)
    assert sum(flags.values()) == 2, flags
    assert flags["relu"] and flags["leaky_relu"]
    assert not flags["relu6"] and not flags["relu_1"] and not flags["relu_2"]


def test_in_place_step_equals_eager() -> None:
    torch.manual_seed(0)
    eager = Mixed()
    gm = codegen(automtl.compile(eager, (2, 3, 8, 8)))
    x = torch.randn(2, 3, 8, 8)
    for model in (eager, gm):
        out = model(x)
        (out[0].square().sum() + out[1].sum()).backward()
    assert any(flag for flag in _calls(gm).values())
    grads = {k: p.grad for k, p in eager.named_parameters()}
    compiled = dict(gm.named_parameters())
    for key, grad in grads.items():
        torch.testing.assert_close(compiled[key].grad, grad, rtol=1e-5, atol=1e-6)
