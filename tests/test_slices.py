"""Task slices between per-task layers change how values travel, never what the supermodel computes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import automtl
from automtl.model import supermodel as supermodel_module
from automtl.model.mixing import MixedOp, TaskBatchNorm


class Block(nn.Module):
    """conv-bn-relu6, depthwise conv-bn-relu, conv-bn, a residual add, and a sigmoid gate."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8))
        self.gate = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        z = self.pw(self.dw(y)) + y
        return z * self.gate(z)


def _pair(monkeypatch: pytest.MonkeyPatch, **kw):
    heads = {t: nn.Identity() for t in "abc"}
    torch.manual_seed(0)
    model = automtl.build(Block(), heads, input_shape=(3, 8, 8), **kw)
    with monkeypatch.context() as m:
        m.setattr(supermodel_module, "pass_slices", lambda trunk, graph: None)
        reference = automtl.build(Block(), heads, input_shape=(3, 8, 8), **kw)
    model.materialize().fill_specific()
    reference.materialize().fill_specific()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    reference.load_state_dict(model.state_dict())
    return model, reference


def test_activations_fuse_and_slices_flow_where_every_reader_takes_them(monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = _pair(monkeypatch)
    code = model.trunk.code
    assert not any(f in code for f in ("hardtanh", "relu", "sigmoid"))  # fused into the norms before them
    norms = {n: m for n, m in model.trunk.named_modules() if isinstance(m, TaskBatchNorm)}
    assert all(norms[n].activation is not None for n in ("stem_1", "dw_1", "gate_1"))
    assert not norms["gate_1"].slices  # read by the product
    assert norms["pw_1"].activation is None and not norms["pw_1"].slices  # read by the add
    convs = {n: m for n, m in model.trunk.named_modules() if isinstance(m, MixedOp)}
    assert all(m.slices for m in convs.values())  # every conv's only reader is a norm
    assert norms["dw_1"].slices and not norms["stem_1"].slices  # the stem's output also feeds the add


@pytest.mark.parametrize("bn", ["follow", "specific"])
@pytest.mark.parametrize("batching", ["dense", "grouped"])
def test_slices_compute_what_joined_values_compute(monkeypatch: pytest.MonkeyPatch, bn: str, batching: str) -> None:
    model, reference = _pair(monkeypatch, bn=bn, batching=batching)
    x = torch.randn(4, 3, 8, 8)
    gates = model.policy.gates("soft", 1.0).detach()
    for train in (True, False):
        model.train(train), reference.train(train)
        got, want = model(x, gates=gates), reference(x, gates=gates)
        for t in want:
            torch.testing.assert_close(got[t], want[t], rtol=1e-5, atol=1e-6)
        if train:
            sum(o.square().mean() for o in got.values()).backward()
            sum(o.square().mean() for o in want.values()).backward()
            grads = dict(reference.named_parameters())
            for name, p in model.named_parameters():
                if p.grad is not None or grads[name].grad is not None:
                    torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-6)
    buffers = dict(reference.named_buffers())
    for name, b in model.named_buffers():
        torch.testing.assert_close(b, buffers[name], rtol=1e-5, atol=1e-6)
    domains = {t: torch.randn(2, 3, 8, 8) for t in "abc"}
    model.train(), reference.train()
    got, want = model(domains, gates=gates), reference(domains, gates=gates)
    for t in want:
        torch.testing.assert_close(got[t], want[t], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows", [(1,), (1, 3), (1, 3, 1), (3, 3)])
def test_weight_mixing_gradients(rows: tuple[int, ...]) -> None:
    """The mixing's own backward against finite differences: shared (1-row) and per-task (T-row) banks."""
    from automtl.model.mixing import MIX_BANKS_MIN, _MixBanks, mix_banks

    torch.manual_seed(0)
    g = torch.rand(3, len(rows), dtype=torch.float64, requires_grad=True)
    banks = [torch.randn(r, 7, dtype=torch.float64, requires_grad=True) for r in rows]
    assert torch.autograd.gradcheck(lambda g, *b: _MixBanks.apply(g, *b), (g, *banks))
    for n in (7, -(-MIX_BANKS_MIN // 3)):  # the small-bank path (autograd's products) and the large one
        banks = [torch.randn(r, n, dtype=torch.float64, requires_grad=True) for r in rows]
        want = sum(g[:, k : k + 1] * b for k, b in enumerate(banks)).expand(3, n)
        got = mix_banks(g, banks)
        torch.testing.assert_close(got, want)
        dw = torch.randn(3, n, dtype=torch.float64)
        grads = torch.autograd.grad(got, [g, *banks], dw)
        for a, b in zip(grads, torch.autograd.grad(want, [g, *banks], dw), strict=True):
            torch.testing.assert_close(a, b)
