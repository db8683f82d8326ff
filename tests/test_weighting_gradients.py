"""Gradient-level loss weighting: ``backward`` against ``combine``, PCGrad and FAMO on a two-task toy whose
gradients are computed by hand, the process-average ``reduce``, gradient scalers and exact resume."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from automtl.train.weighting import (
    FAMO,
    Equal,
    PCGrad,
    Reduce,
    get_weighting,
    task_gradients,
)


# --- the two-task toy: a shared 2-vector theta and a parameter phi of task "a" only ---------------
class Toy(nn.Module):
    """L_a = 1/2 |theta - p_a|^2 + phi^2 and L_b = 1/2 |theta - p_b|^2, at theta = 0, phi = 1.5: the
    gradients on theta are g_a = -p_a and g_b = -p_b, on phi 2 * phi = 3 (task a only)."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(2))
        self.phi = nn.Parameter(torch.tensor(1.5))
        self.unused = nn.Parameter(torch.zeros(3))  # shared but reached by no task

    def losses(self, p_a: tuple[float, float], p_b: tuple[float, float] | None) -> dict[str, torch.Tensor | None]:
        la = 0.5 * (self.theta - torch.tensor(p_a)).pow(2).sum() + self.phi**2
        lb = None if p_b is None else 0.5 * (self.theta - torch.tensor(p_b)).pow(2).sum()
        return {"a": la, "b": lb}

    def shared(self) -> list[nn.Parameter]:
        return [self.theta, self.unused]


class TimesScaler:
    """A gradient scaler stand-in: multiplies what is backpropagated by a constant."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def scale(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs * self.factor


def _grads(toy: Toy) -> tuple[list[float] | None, float | None]:
    return (None if toy.theta.grad is None else toy.theta.grad.tolist(),
            None if toy.phi.grad is None else toy.phi.grad.item())


def test_loss_level_backward_equals_combine_backward() -> None:
    for name, kwargs in [("equal", {}), ("static", {"weights": {"a": 0.5, "b": 2.0}}), ("uncertainty", {}),
                         ("dwa", {}), ("famo", {}), ("abdp", {})]:
        w = get_weighting(name, ["a", "b"], **kwargs)
        if name == "uncertainty":
            with torch.no_grad():
                w.log_vars.copy_(torch.tensor([0.3, -0.2]))
        if name == "abdp":
            w.after_step({"a": 2.0, "b": 2.0})
            w.after_step({"a": 3.0, "b": 1.0})
        ref, toy = Toy(), Toy()
        expected = w.combine(ref.losses((1.0, 0.0), (-1.0, 1.0)))
        expected.backward()
        ref_log_vars = w.log_vars.grad.clone() if name == "uncertainty" else None
        if name == "uncertainty":
            w.log_vars.grad = None
        total = w.backward(toy.losses((1.0, 0.0), (-1.0, 1.0)), toy.shared())
        assert not total.requires_grad and total.item() == pytest.approx(expected.item()), name
        assert torch.equal(toy.theta.grad, ref.theta.grad) and torch.equal(toy.phi.grad, ref.phi.grad), name
        assert toy.unused.grad is None, name
        if name == "uncertainty":
            assert torch.equal(w.log_vars.grad, ref_log_vars)
    # the equal total is the plain sum: L_a = 0.5 + 2.25, L_b = 1.0; theta.grad = g_a + g_b = (0, -1)
    toy = Toy()
    assert Equal(["a", "b"]).backward(toy.losses((1.0, 0.0), (-1.0, 1.0))).item() == pytest.approx(3.75)
    assert _grads(toy) == ([0.0, -1.0], 3.0)


# --- PCGrad -----------------------------------------------------------------------------------------
def test_pcgrad_projects_conflicting_gradients_by_hand() -> None:
    # g_a = (-1, 0), g_b = (1, -1): g_a . g_b = -1 < 0
    # g_a' = g_a - (-1 / |g_b|^2) g_b = (-1, 0) + 1/2 (1, -1) = (-0.5, -0.5)
    # g_b' = g_b - (-1 / |g_a|^2) g_a = (1, -1) + (-1, 0) = (0, -1); theta.grad = (-0.5, -1.5)
    toy = Toy()
    total = PCGrad(["a", "b"]).backward(toy.losses((1.0, 0.0), (-1.0, 1.0)), toy.shared())
    assert total.item() == pytest.approx(3.75) and not total.requires_grad
    theta, phi = _grads(toy)
    assert theta == pytest.approx([-0.5, -1.5]) and phi == pytest.approx(3.0)  # phi: the plain gradient
    assert toy.unused.grad is None  # reached by no task: left as the plain backward leaves it


def test_pcgrad_leaves_agreeing_gradients_alone() -> None:
    toy = Toy()  # g_a = (-1, 0), g_b = (-1, -1): g_a . g_b = 1 > 0, theta.grad = g_a + g_b
    PCGrad(["a", "b"]).backward(toy.losses((1.0, 0.0), (1.0, 1.0)), toy.shared())
    assert _grads(toy) == ([-2.0, -1.0], 3.0)


def test_pcgrad_accumulates_scales_and_skips_a_missing_task() -> None:
    toy = Toy()
    toy.theta.grad = torch.tensor([10.0, 20.0])
    toy.phi.grad = torch.tensor(1.0)
    PCGrad(["a", "b"]).backward(toy.losses((1.0, 0.0), (-1.0, 1.0)), toy.shared())
    theta, phi = _grads(toy)
    assert theta == pytest.approx([9.5, 18.5]) and phi == pytest.approx(4.0)  # added to what was there
    toy = Toy()  # a gradient scaler: every gradient scaled alike, the total unscaled
    total = PCGrad(["a", "b"]).backward(toy.losses((1.0, 0.0), (-1.0, 1.0)), toy.shared(),
                                        scaler=TimesScaler(1024.0))
    theta, phi = _grads(toy)
    assert theta == pytest.approx([-512.0, -1536.0]) and phi == pytest.approx(3072.0)
    assert total.item() == pytest.approx(3.75)
    toy = Toy()  # task b has no label: the gradient of task a alone
    PCGrad(["a", "b"]).backward(toy.losses((1.0, 0.0), None), toy.shared())
    assert _grads(toy) == ([-1.0, 0.0], 3.0)
    with pytest.raises(ValueError, match="^pcgrad weighting: no shared parameter that requires a gradient"):
        PCGrad(["a", "b"]).backward(Toy().losses((1.0, 0.0), None), [])
    with pytest.raises(ValueError, match="^pcgrad weighting: shared\\[0\\] is not a leaf tensor"):
        toy = Toy()
        PCGrad(["a", "b"]).backward(toy.losses((1.0, 0.0), None), [toy.theta * 2])


def _two_processes(step_a: Callable[[Reduce], Toy], step_b: Callable[[Reduce], Toy]) -> tuple[Toy, Toy]:
    """Run one step as two data-parallel processes would: each ``reduce`` call averages with the other
    process's input of the same call (recorded by a first run whose gradients are thrown away)."""
    seen: dict[str, list[torch.Tensor]] = {"a": [], "b": []}

    def record(into: list[torch.Tensor]) -> Reduce:
        return lambda t: into.append(t.clone()) or t

    def average_with(other: list[torch.Tensor]) -> Reduce:
        queue = list(other)
        return lambda t: (t + queue.pop(0)) / 2

    step_a(record(seen["a"]))
    step_b(record(seen["b"]))
    return step_a(average_with(seen["b"])), step_b(average_with(seen["a"]))


def test_pcgrad_reduce_projects_the_process_average() -> None:
    # process A: g_a = (-2, 0), g_b = (1, -1); process B: g_a = (0, 0), g_b = (1, -1)
    # averaged: g_a = (-1, 0), g_b = (1, -1), whose projection is the hand result (-0.5, -1.5)
    def step(p_a: tuple[float, float], p_b: tuple[float, float] | None) -> Callable[[Reduce], Toy]:
        def run(reduce: Reduce) -> Toy:
            toy = Toy()
            PCGrad(["a", "b"]).backward(toy.losses(p_a, p_b), toy.shared(), reduce=reduce)
            return toy
        return run

    a, b = _two_processes(step((2.0, 0.0), (-1.0, 1.0)), step((0.0, 0.0), (-1.0, 1.0)))
    assert a.theta.grad.tolist() == pytest.approx([-0.5, -1.5]) and torch.equal(a.theta.grad, b.theta.grad)
    assert a.unused.grad is None and b.unused.grad is None
    # task b has no label in process B: its row there is zero; averaged g_a = (-1, 0), g_b = (1/2, -1/2),
    # a' = (-1, 0) + (1/2, -1/2) = (-1/2, -1/2), b' = (1/2, -1/2) + 1/2 (-1, 0) = (0, -1/2)
    a, b = _two_processes(step((2.0, 0.0), (-1.0, 1.0)), step((0.0, 0.0), None))
    assert a.theta.grad.tolist() == pytest.approx([-0.5, -1.0]) and torch.equal(a.theta.grad, b.theta.grad)
    other = Toy()
    grads_b = task_gradients(other.losses((0.0, 0.0), (-1.0, 1.0)), other.shared())
    assert grads_b["a"].tolist() == [0.0] * 5 and grads_b["b"][:2].tolist() == [1.0, -1.0]
    assert other.theta.grad is None  # task_gradients leaves .grad alone
    # without reduce, A projects its own: g_a' = (-2, 0) + (1, -1) = (-1, -1), g_b' = (1, -1) + 1/2 (-2, 0)
    toy = Toy()
    PCGrad(["a", "b"]).backward(toy.losses((2.0, 0.0), (-1.0, 1.0)), toy.shared())
    assert toy.theta.grad.tolist() == pytest.approx([-1.0, -2.0])


def _three_task_step(w: PCGrad) -> torch.Tensor:
    theta = nn.Parameter(torch.zeros(2))
    targets = {"a": (1.0, 0.0), "b": (-1.0, 1.0), "c": (-0.5, -1.0)}
    losses = {t: 0.5 * (theta - torch.tensor(p)).pow(2).sum() for t, p in targets.items()}
    w.backward(losses, [theta])
    return theta.grad.clone()


def test_pcgrad_seeded_order_and_exact_resume() -> None:
    results = {tuple(_three_task_step(PCGrad(["a", "b", "c"], seed=s)).tolist()) for s in range(12)}
    assert len(results) > 1  # with three conflicting tasks the order matters, and it is drawn
    first, second = PCGrad(["a", "b", "c"], seed=5), PCGrad(["a", "b", "c"], seed=5)
    assert torch.equal(_three_task_step(first), _three_task_step(second))  # same seed, same order
    state = {k: v.clone() for k, v in first.state_dict().items()}
    expected = [_three_task_step(first) for _ in range(4)]
    resumed = PCGrad(["a", "b", "c"], seed=0)
    resumed.load_state_dict(state)
    assert all(torch.equal(_three_task_step(resumed), e) for e in expected)
    with pytest.raises(ValueError, match="^pcgrad weighting: the saved state is not a random generator state"):
        resumed.set_extra_state({"seed": 1})


# --- FAMO ---------------------------------------------------------------------------------------------
def test_famo_gradient_and_weights_after_one_step_by_hand() -> None:
    w = FAMO(["a", "b"], optimizer="sgd", lr=0.1, gamma=0.0)
    assert w.weights() == {"a": 0.5, "b": 0.5}
    # L_a = 1/2 * 4 + 1.5^2 = 4.25, L_b = 0.5; z = (1/2, 1/2); z / L = (2/17, 1); c = 19/17
    # factors z / (c L) = (2/19, 17/19): theta.grad = 2/19 (-2, 0) + 17/19 (0, -1), phi.grad = 2/19 * 3
    toy = Toy()
    total = w.backward(toy.losses((2.0, 0.0), (0.0, 1.0)), toy.shared())
    assert total.item() == pytest.approx((0.5 * math.log(4.25) + 0.5 * math.log(0.5)) * 17 / 19, rel=1e-6)
    theta, phi = _grads(toy)
    assert theta == pytest.approx([-4 / 19, -17 / 19], rel=1e-6) and phi == pytest.approx(6 / 19, rel=1e-6)
    # after the step the same batch gives L_a = 4.0, L_b = 0.25: delta = (log(4.25/4), log 2)
    # g = z * (delta - z . delta) = ((d_a - d_b) / 4, (d_b - d_a) / 4); xi = -0.1 g
    w.after_step({"a": 4.0, "b": torch.tensor(0.25)})
    d_a, d_b = math.log(4.25 / 4.0), math.log(2.0)
    xi_a, xi_b = -0.1 * (d_a - d_b) / 4, -0.1 * (d_b - d_a) / 4
    assert w.logits.tolist() == pytest.approx([xi_a, xi_b], rel=1e-6)
    z_a = 1 / (1 + math.exp(xi_b - xi_a))
    assert w.weights() == pytest.approx({"a": z_a, "b": 1 - z_a}, rel=1e-6)
    assert w.weights()["a"] > 0.5  # task a's log-loss fell less: it gains weight
    # the next step's factors use the new weights: z / L normalised
    toy = Toy()
    w.backward(toy.losses((2.0, 0.0), (0.0, 1.0)), toy.shared())
    f_a, f_b = z_a / 4.25, (1 - z_a) / 0.5
    f_a, f_b = f_a / (f_a + f_b), f_b / (f_a + f_b)
    assert toy.theta.grad.tolist() == pytest.approx([-2 * f_a, -f_b], rel=1e-6)


def test_famo_adam_update_matches_torch_adam_on_the_softmax_jacobian() -> None:
    w = FAMO(["a", "b", "c"], lr=0.05, gamma=0.01)
    xi = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([xi], lr=0.05, weight_decay=0.01)
    before = [(3.0, 1.0, 2.0), (2.5, 0.9, 1.0), (2.4, 0.5, 0.9), (2.0, 0.45, 0.5)]
    after = [(2.5, 0.9, 1.0), (2.4, 0.5, 0.9), (2.0, 0.45, 0.5), (1.9, 0.4, 0.2)]
    for old, new in zip(before, after, strict=True):
        w.combine({t: torch.tensor(v) for t, v in zip("abc", old, strict=True)})  # records the log-losses
        w.after_step(dict(zip("abc", new, strict=True)))
        delta = torch.tensor([math.log(o / n) for o, n in zip(old, new, strict=True)], dtype=torch.float64)
        (grad,) = torch.autograd.grad(torch.softmax(xi, dim=0), xi, grad_outputs=delta)
        xi.grad = grad
        opt.step()
        assert torch.allclose(w.logits, xi.detach(), rtol=1e-6, atol=1e-9)  # float32 losses, eps
    assert w.weights()["c"] < w.weights()["a"]  # c's log-loss fell fastest
    # the first Adam step moves every logit by about lr against the sign of its gradient
    first = FAMO(["a", "b"])
    first.after_step({"a": 1.0, "b": 1.0}, before={"a": 2.0, "b": 1.0})
    assert first.logits.tolist() == pytest.approx([-0.025, 0.025], rel=1e-6)


def test_famo_reduce_uses_the_process_average_and_errors() -> None:
    # process A: losses (4.25, 0.5), process B: (2.25, 2.0); averaged D = (3.25, 1.25), z / D = (2/13, 2/5),
    # factors (5/18, 13/18): A's theta.grad = 5/18 (-2, 0) + 13/18 (0, -1), B's = 13/18 (0, -2)
    famos = {}

    def step(p_a: tuple[float, float], p_b: tuple[float, float] | None, key: str) -> Callable[[Reduce], Toy]:
        def run(reduce: Reduce) -> Toy:
            toy, famos[key] = Toy(), FAMO(["a", "b"])
            famos[key].backward(toy.losses(p_a, p_b), toy.shared(), reduce=reduce)
            return toy
        return run

    a, b = _two_processes(step((2.0, 0.0), (0.0, 1.0), "a"), step((0.0, 0.0), (0.0, 2.0), "b"))
    assert a.theta.grad.tolist() == pytest.approx([-10 / 18, -13 / 18], rel=1e-6)
    assert b.theta.grad.tolist() == pytest.approx([0.0, -26 / 18], rel=1e-6)
    for w in famos.values():  # the same log-losses recorded in every process
        assert w.prev_log.tolist() == pytest.approx([math.log(3.25), math.log(1.25)], rel=1e-6)
    # task b has no label in process B: D = (3.25, 0.5), c over both tasks = 2/13 + 1 = 15/13, factors
    # (2/15, 13/15) in both processes: A's theta.grad = 2/15 (-2, 0) + 13/15 (0, -1), B's phi.grad = 2/15 * 3
    a, b = _two_processes(step((2.0, 0.0), (0.0, 1.0), "a"), step((0.0, 0.0), None, "b"))
    assert a.theta.grad.tolist() == pytest.approx([-4 / 15, -13 / 15], rel=1e-6)
    assert b.phi.grad.item() == pytest.approx(6 / 15, rel=1e-6) and a.phi.grad.item() == pytest.approx(6 / 15)
    for w in famos.values():
        assert w.prev_log.tolist() == pytest.approx([math.log(3.25), math.log(0.5)], rel=1e-6)
    w = FAMO(["a", "b"])
    with pytest.raises(ValueError, match="^famo weighting: after_step needs the losses before the step"):
        w.after_step({"a": 1.0, "b": 1.0})
    with pytest.raises(ValueError, match="^famo weighting: task 'b': loss -0.5 minus its min_loss 0 is not > 0"):
        FAMO(["a", "b"]).combine({"a": torch.tensor(1.0), "b": torch.tensor(-0.5)})
    shifted = FAMO(["a", "b"], min_losses={"b": -1.0})  # a floor below the loss makes it valid
    assert math.isfinite(shifted.combine({"a": torch.tensor(1.0), "b": torch.tensor(-0.5)}).item())
    with pytest.raises(ValueError, match="^famo weighting: task 'a': loss nan is not finite"):
        w.after_step({"a": float("nan"), "b": 1.0})


def test_famo_state_dict_round_trip_resumes_exactly() -> None:
    def step(w: FAMO, k: int) -> None:
        w.combine({"a": torch.tensor(2.0 / (k + 1)), "b": torch.tensor(1.0 - 0.1 * k)})
        w.after_step({"a": 1.9 / (k + 1), "b": 0.98 - 0.1 * k})

    w = FAMO(["a", "b"], gamma=0.1)
    for k in range(3):
        step(w, k)
    resumed = FAMO(["a", "b"], gamma=0.1)
    resumed.load_state_dict({k: v.clone() for k, v in w.state_dict().items()})
    for k in range(3, 6):
        step(w, k)
        step(resumed, k)
    assert torch.equal(w.logits, resumed.logits) and torch.equal(w.exp_avg_sq, resumed.exp_avg_sq)
    assert int(resumed.updates) == 6


def test_combine_keeps_working_for_callers_that_backpropagate_the_total() -> None:
    toy = Toy()  # PCGrad's combine is the plain sum (no surgery without backward)
    PCGrad(["a", "b"]).combine(toy.losses((1.0, 0.0), (-1.0, 1.0))).backward()
    assert _grads(toy) == ([0.0, -1.0], 3.0)
    toy = Toy()  # FAMO's combine carries FAMO's gradient (factors 2/19, 17/19 as by hand above)
    FAMO(["a", "b"]).combine(toy.losses((2.0, 0.0), (0.0, 1.0))).backward()
    assert toy.theta.grad.tolist() == pytest.approx([-4 / 19, -17 / 19], rel=1e-6)
    eval_famo = FAMO(["a", "b"]).eval()  # evaluation (e.g. a policy step) records nothing
    eval_famo.combine({"a": torch.tensor(1.0), "b": torch.tensor(2.0)})
    assert not bool(eval_famo.prev_mask.any())


def test_pcgrad_with_a_real_grad_scaler_unscales_steps_and_skips_overflow() -> None:
    toy = Toy()
    opt = torch.optim.SGD([toy.theta, toy.phi], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    PCGrad(["a", "b"]).backward(toy.losses((1.0, 0.0), (-1.0, 1.0)), toy.shared(), scaler=scaler)
    scaler.unscale_(opt)  # the loop unscales (then clips) after backward and averaging
    assert _grads(toy) == (pytest.approx([-0.5, -1.5]), pytest.approx(3.0))
    scaler.step(opt)
    scaler.update()
    assert toy.theta.tolist() == pytest.approx([0.05, 0.15])
    huge = torch.amp.GradScaler("cpu", init_scale=1e38)  # scaled gradients overflow: the step is skipped
    toy.theta.grad = toy.phi.grad = None
    before = toy.theta.detach().clone()
    PCGrad(["a", "b"]).backward(toy.losses((1.0, 0.0), (-1.0, 1.0)), toy.shared(), scaler=huge)
    assert not torch.isfinite(toy.theta.grad).all()
    huge.step(opt)
    huge.update()
    assert torch.equal(toy.theta.detach(), before) and huge.get_scale() < 1e38
