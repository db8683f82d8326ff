"""The search runtime: sanity checks that could fail, stage contracts and bad input.

Sanity checks with the default SearchConfig, only the step counts shrunk (tiny plain CNNs on 8x8
random images, Identity heads so the trunk produces the logits; ``skip=False`` so every node
chooses between shared and specific):

* (a) two tasks with identical labels share every node;
* (b) a task whose classes are a fixed permutation of the other's cannot share the layer
  that writes the logits: the search splits it, and the searched model beats the all-shared one;
* (c) the sharing regularizer and the expected cost equal a hand computation;
* (d) a parameter budget of 50% of T separate backbones is met by the derived model's report.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from automtl.model.supermodel import SuperModel, build
from automtl.search.regularizers import CostModel, budget_penalty, fit_to_budget, sharing_regularizer
from automtl.search.searcher import SearchConfig, Searcher, search, temperature
from automtl.train.tasks import Segmentation, TaskInputError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread (and do not fight other test processes for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Plain(nn.Module):
    """``layers`` 3x3 convolutions (ReLU between), the last one writing ``out`` logits."""

    def __init__(self, width: int = 8, layers: int = 8, out: int = 3) -> None:
        super().__init__()
        chans = [3] + [width] * (layers - 1) + [out]
        self.convs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 3, padding=1) for i in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.convs) - 1:
                x = F.relu(x)
        return x


def colour(x: torch.Tensor) -> torch.Tensor:
    """Per pixel: which channel of the 3x3-averaged image is largest (3 classes)."""
    return F.avg_pool2d(x, 3, 1, 1).argmax(1)


class Labelled(Dataset):
    """Random 3x8x8 images with per-pixel labels: ``(x, {task: colour(x) shifted by shifts[task] mod 3})``."""

    def __init__(self, n: int, shifts: dict[str, int], seed: int = 0, size: int = 8) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 3, size, size, generator=g)
        base = colour(self.x)
        self.y = {t: (base + k) % 3 for t, k in shifts.items()}

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.x[i], {t: y[i] for t, y in self.y.items()}


# the default SearchConfig, only the step counts shrunk
SANITY = dict(warmup_steps=100, search_iterations=200, finetune_steps=100, quiet=True, seed=0)


def searcher(shifts: dict[str, int], n: int = 384, layers: int = 8, skip: bool = False, seed: int = 0,
             **overrides) -> Searcher:
    torch.manual_seed(seed)
    tasks = {t: Segmentation(t, 3) for t in shifts}
    model = build(Plain(layers=layers), {t: nn.Identity() for t in shifts}, input_shape=(3, 8, 8), skip=skip)
    return Searcher(model, tasks, Labelled(n, shifts, seed), SearchConfig(**{**SANITY, "seed": seed, **overrides}))


@pytest.fixture(scope="module")
def identical() -> Searcher:
    s = searcher({"a": 0, "b": 0})
    s.warmup()
    s.search()
    s.derive()
    return s


@pytest.fixture(scope="module")
def conflict() -> Searcher:
    s = searcher({"a": 0, "b": 1})
    s.warmup()
    s.search()
    s.derive()
    return s


# --- (a), (b): sharing follows the tasks ------------------------------------------------------------


def test_identical_tasks_share_everything(identical: Searcher) -> None:
    assert identical.architecture.shared_fraction() == 1.0, identical.architecture.choices


@pytest.mark.parametrize("seed", [1, 2])
def test_the_defaults_find_the_split_on_other_seeds(seed: int) -> None:
    """Default SearchConfig (step counts shrunk): identical tasks share every node, permuted ones split late."""
    archs = {}
    for name, shifts in (("identical", {"a": 0, "b": 0}), ("conflict", {"a": 0, "b": 1})):
        s = searcher(shifts, seed=seed)
        s.warmup()
        s.search()
        archs[name] = s.derive()
    assert archs["identical"].shared_fraction() == 1.0, archs["identical"].choices
    last = archs["conflict"].choices["convs.7"]
    assert "specific" in last.values() and archs["conflict"].shared_fraction() < 1.0, archs["conflict"].choices


def test_conflicting_tasks_split_and_beat_all_shared(identical: Searcher, conflict: Searcher) -> None:
    frac = conflict.architecture.shared_fraction()
    assert frac < identical.architecture.shared_fraction(), conflict.architecture.choices
    last = conflict.model.choices[-1].node  # the layer writing the logits cannot serve a permutation
    assert "specific" in conflict.architecture.choices[last].values()
    searched = conflict.finetune()
    loss_searched = conflict.validate(searched)["total"]
    shared = conflict.finetune(conflict.model.uniform_architecture("shared"))
    loss_shared = conflict.validate(shared)["total"]
    assert loss_searched < 0.85 * loss_shared, (loss_searched, loss_shared)


# --- (c): regularizer and expected cost by hand -----------------------------------------------------


class Three(nn.Module):
    """c1 has no skip branch (no padding), c2 and c3 have an identity skip: depths 1, 2, 3."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.c3 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c3(F.relu(self.c2(F.relu(self.c1(x)))))


LOGITS = {"a": [[1.0, 0.5], [0.2, 0.8, 0.0], [0.3, -0.3, 0.6]], "b": [[-1.0, 0.0], [0.0, 0.0, 0.0], [1.5, 0.5, -0.5]]}


def _softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def _three() -> SuperModel:
    torch.manual_seed(0)
    model = build(Three(), {"a": nn.Identity(), "b": nn.Identity()}, input_shape=(3, 8, 8))
    with torch.no_grad():
        for t, rows in enumerate(LOGITS.values()):
            for v, row in enumerate(rows):
                model.policy.logits[t, v, : len(row)] = torch.tensor(row)
    return model


def test_sharing_regularizer_matches_hand_computation() -> None:
    model = _three()
    assert [c.depth for c in model.choices] == [1, 2, 3]
    assert [len(c.branches) for c in model.choices] == [2, 3, 3]
    reg = sharing_regularizer(model.policy.probabilities(), [c.depth for c in model.choices], sharpness=6.0)
    reg.backward()
    grad = model.policy.logits.grad
    reg = reg.detach()

    # by hand: D = 3, node weights (D - d)/D = 2/3, 1/3, 0; c1 has no skip, so g_skip = 0 there
    s, weight = 6.0, [2 / 3, 1 / 3, 0.0]
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    sigmoid = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    value = 0.0
    for t, rows in enumerate(LOGITS.values()):
        for v, row in enumerate(rows):
            p = _softmax(row)
            g = p + [0.0] * (3 - len(p))
            value += weight[v] * (softplus(s * (g[1] - g[0])) + softplus(s * (g[2] - g[0])))
            a1, a2 = s * weight[v] * sigmoid(s * (g[1] - g[0])), s * weight[v] * sigmoid(s * (g[2] - g[0]))
            dg = [-(a1 + a2), a1, a2][: len(p)]  # dR/dg, then through the softmax to the logits
            dz = [sum(dg[j] * p[j] * ((i == j) - p[i]) for j in range(len(p))) for i in range(len(p))]
            assert grad[t, v, : len(p)].tolist() == pytest.approx(dz, abs=1e-6)
            assert grad[t, v, len(p):].abs().sum() == 0
    assert float(reg) == pytest.approx(value, rel=1e-6)
    assert float(reg) == pytest.approx(3.338901356899656, rel=1e-6)  # the same sum, written out once
    assert grad[0, 0, :2].tolist() == pytest.approx([-0.3735202532, 0.3735202532], abs=1e-6)
    assert grad[1, 0, :2].tolist() == pytest.approx([-1.6109974959, 1.6109974959], abs=1e-6)
    assert grad[1, 1].tolist() == pytest.approx([-2 / 3, 1 / 3, 1 / 3], abs=1e-6)


def test_expected_params_match_hand_computation_and_reports() -> None:
    model = _three()
    cost = CostModel(model, "params")
    probs = model.policy.probabilities()
    # |W| = 112 (c1), 148 (c2, c3); identity skips cost nothing; Identity heads have no parameters
    p = {t: [_softmax(r) + [0.0] * (3 - len(r)) for r in rows] for t, rows in LOGITS.items()}
    want = 0.0
    for v, size in enumerate([112, 148, 148]):
        pa, pb = p["a"][v], p["b"][v]
        want += size * (1 - (1 - pa[0]) * (1 - pb[0])) + size * (pa[1] + pb[1])
    assert float(cost.expected(probs).detach()) == pytest.approx(want, rel=1e-6)
    assert cost.baseline()["params"] == 2 * (112 + 148 + 148)
    ratio = cost.ratio(probs)
    ratio.backward()
    assert model.policy.logits.grad.abs().sum() > 0
    ratio = ratio.detach()
    assert float(budget_penalty(ratio, 0.5, weight=2.0)) == pytest.approx(2 * max(float(ratio) - 0.5, 0))
    assert float(budget_penalty(ratio, 0.9, mode="target")) == pytest.approx(abs(float(ratio) - 0.9))
    # one-hot policies: the expectation is the derived model's exact count (and, on a chain, FLOPs)
    flops = CostModel(model, "flops")
    gen = torch.Generator().manual_seed(0)
    for _ in range(6):
        pick = torch.stack([torch.randint(0, len(c.branches), (2,), generator=gen) for c in model.choices], 1)
        arch = model.architecture_from_indices(pick)
        report = model.derive(arch).report()
        one_hot = F.one_hot(pick, 3).double()
        assert float(cost.expected(one_hot)) == report["total"]["params"]
        assert float(flops.expected(one_hot)) == pytest.approx(report["total"]["flops"], rel=1e-9)
        assert flops.baseline() == report["separate"]


def test_fit_to_budget_repairs_and_fills() -> None:
    model = _three()
    cost = CostModel(model, "params")
    ratio_of = lambda pick: float(cost.ratio(F.one_hot(pick, 3).double()))  # noqa: E731
    probs = torch.tensor([[[0.2, 0.8, 0.0], [0.1, 0.6, 0.3], [0.3, 0.4, 0.3]],
                          [[0.3, 0.7, 0.0], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1]]])
    argmax = probs.argmax(-1)
    assert ratio_of(argmax) == 1.0
    fitted = fit_to_budget(probs, argmax, ratio_of, 0.6)
    assert ratio_of(fitted) <= 0.6
    assert (probs.gather(-1, fitted.unsqueeze(-1)) > 0).all()  # never an unavailable branch
    low = torch.zeros_like(argmax)  # all shared: 0.5
    assert torch.equal(fit_to_budget(probs, low, ratio_of, 0.6), low)  # "max": nothing to repair
    filled = fit_to_budget(probs, low, ratio_of, 0.9, fill=True)
    assert 0.5 < ratio_of(filled) <= 0.9
    assert ratio_of(filled) > 0.9 - 148 / 816  # no single switch of the cheapest node would still fit


# --- (d): a budget of half of T backbones -----------------------------------------------------------


def test_budget_target_is_met_by_the_derived_model() -> None:
    s = searcher({"a": 0, "b": 1, "c": 2}, search_iterations=150, lambda_policy=0.0, budget_target=0.5,
                 budget_mode="target", budget_weight=1.0)
    s.warmup()
    s.search()
    arch = s.derive()
    record = s.history["derive"][-1]
    assert record["expected_cost_ratio"] == pytest.approx(0.5, abs=0.05)  # the search met it in expectation
    report = s.model.derive(arch).report()
    assert report["params_ratio"] == pytest.approx(0.5, abs=0.05)
    assert report["params_ratio"] == pytest.approx(record["cost_ratio"], rel=1e-9)


def test_max_budget_caps_the_derived_model() -> None:
    s = searcher({"a": 0, "b": 1}, n=128, warmup_steps=5, search_iterations=20, lambda_policy=0.0,
                 budget_target=0.55, budget_mode="max")
    s.warmup()
    s.search()
    with torch.no_grad():  # a spread policy whose argmax is all-specific, far over the budget
        s.model.policy.logits.zero_()
        s.model.policy.logits[:, :, 1] = 0.5
    arch = s.derive()
    assert s.history["derive"][-1]["unfitted_cost_ratio"] == 1.0
    assert s.model.derive(arch).report()["params_ratio"] <= 0.55


# --- stages -----------------------------------------------------------------------------------------


def small(**overrides) -> Searcher:
    cfg = dict(warmup_steps=2, search_iterations=3, finetune_steps=2, batch_size=8, n=64, layers=3)
    cfg.update(overrides)
    return searcher({"a": 0, "b": 1}, skip=True, **cfg)


@pytest.mark.parametrize("paths", ["mix", "sample"])
def test_warmup_trains_the_specific_branches(paths: str) -> None:
    # a sampled path trains one option per task and node: enough steps that every option is drawn
    s = small(warmup_paths=paths, warmup_steps=2 if paths == "mix" else 24)
    mixed = s.model.mixed_modules()
    assert not any(bool(m.filled) for m in mixed)
    s.warmup(steps=1)  # specific branches start as copies of the shared ones ...
    m = mixed[-1]
    assert bool(m.filled) and m.specific_weight.shape[0] == 2
    s.warmup()  # ... and are trained as branches of their own: the task loss can tell them apart
    for m in mixed:
        assert bool(m.filled)
        assert not torch.equal(m.specific_weight[0], m.weight) and not torch.equal(m.specific_weight[1], m.weight)


def test_temperature_schedule() -> None:
    every_100 = SearchConfig(tau_interval=100)
    assert temperature(0, every_100) == 5.0
    assert temperature(99, every_100) == 5.0
    assert temperature(100, every_100) == pytest.approx(5.0 * 0.965)
    assert temperature(250, every_100) == pytest.approx(5.0 * 0.965**2)
    # by default tau anneals 50 times over the search: 500 policy steps -> every 10
    assert temperature(9, SearchConfig()) == 5.0 and temperature(10, SearchConfig()) == pytest.approx(5.0 * 0.965)
    assert temperature(500, SearchConfig()) == pytest.approx(5.0 * 0.965**50)
    assert temperature(3, SearchConfig(search_iterations=20)) == pytest.approx(5.0 * 0.965**3)
    s = small(tau_start=4.0, tau_decay=0.5, tau_interval=3, search_iterations=7)
    s.search()
    taus = [r["tau"] for r in s.history["search"] if r["phase"] == "policy"]
    assert taus == [4.0, 4.0, 4.0, 2.0, 2.0, 2.0, 1.0]
    assert s.tau() == 1.0


def _weights(s: Searcher) -> list[torch.Tensor]:
    return [p.detach().clone() for p in s.model.weight_parameters()]


def test_weight_steps_leave_logits_and_policy_steps_leave_weights() -> None:
    s = small(weight_steps_per_iter=2, policy_steps_per_iter=0)
    s.warmup()
    logits, weights = s.model.policy.logits.detach().clone(), _weights(s)
    s.search()
    assert torch.equal(s.model.policy.logits, logits)
    assert any(not torch.equal(a, b) for a, b in zip(weights, _weights(s), strict=True))

    s = small(weight_steps_per_iter=0, policy_steps_per_iter=2)
    s.warmup()
    logits, weights = s.model.policy.logits.detach().clone(), _weights(s)
    s.search()
    assert not torch.equal(s.model.policy.logits, logits)
    assert all(torch.equal(a, b) for a, b in zip(weights, _weights(s), strict=True))


def test_same_seed_same_logits() -> None:
    runs = []
    for _ in range(2):
        s = small(search_mode="hard")
        s.warmup()
        s.search()
        runs.append(s.model.policy.logits.detach().clone())
    assert torch.equal(runs[0], runs[1])
    other = small(seed=1)
    other.warmup()
    other.search()
    assert not torch.equal(runs[0], other.model.policy.logits)


def test_search_end_to_end_with_sampling_and_scratch() -> None:
    torch.manual_seed(0)
    tasks = {t: Segmentation(t, 3) for t in ("a", "b")}
    model = build(Plain(layers=3), {t: nn.Identity() for t in tasks}, input_shape=(3, 8, 8))
    result = search(model, tasks, Labelled(64, {"a": 0, "b": 1}), SearchConfig(quiet=True),
                    warmup_steps=2, search_iterations=2, finetune_steps=3, batch_size=8, derive="sample",
                    sample_k=3, finetune_from="scratch", weighting="dwa", budget_target=0.8)
    assert set(result.metrics) == {"a", "b"} and "miou" in result.metrics["a"]
    assert len(result.history["warmup"]) == 2 and len(result.history["finetune"]) == 3
    assert [r["phase"] for r in result.history["search"]] == ["weights", "policy"] * 2
    assert any("candidate" in r for r in result.history["derive"])
    assert result.model.report()["params_ratio"] <= 0.8
    assert [v["stage"] for v in result.history["val"]] == ["warmup", "search", "finetune"]
    out = result.model.as_dict(torch.rand(2, 3, 8, 8))
    assert out["a"].shape == (2, 3, 8, 8)


class PerTask(Dataset):
    """Multi-domain items ``{task: (x_t, y_t)}``: each task sees its own images."""

    def __init__(self, n: int) -> None:
        self.parts = {t: Labelled(n, {t: k}, seed=k) for k, t in enumerate(("a", "b"))}

    def __len__(self) -> int:
        return len(self.parts["a"])

    def __getitem__(self, i: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {t: (d.x[i], d.y[t][i]) for t, d in self.parts.items()}


def test_multi_domain_batches() -> None:
    torch.manual_seed(0)
    tasks = {t: Segmentation(t, 3) for t in ("a", "b")}
    model = build(Plain(layers=3), {t: nn.Identity() for t in tasks}, input_shape=(3, 8, 8))
    s = Searcher(model, tasks, PerTask(48), SearchConfig(quiet=True, warmup_steps=2, search_iterations=2,
                                                          finetune_steps=2, batch_size=8))
    result = s.run()
    assert s.multi_domain and set(result.metrics) == {"a", "b"}
    x = {t: torch.rand(2, 3, 8, 8) for t in tasks}
    fresh = s.build_derived(result.architecture, "supermodel").eval()
    model.eval()
    ref = model(x, mode="fixed", architecture=result.architecture)
    got = fresh(*[x[t] for t in tasks])  # one input per task, in task order
    for t, out in zip(tasks, got, strict=True):
        assert torch.allclose(out, ref[t], atol=1e-5)


def test_missing_labels_are_masked() -> None:
    class Partial(Labelled):
        def __getitem__(self, i: int):
            x, y = super().__getitem__(i)
            return x, ({"a": y["a"]} if i % 2 else y)  # task b labelled on even items only

    torch.manual_seed(0)
    tasks = {t: Segmentation(t, 3) for t in ("a", "b")}
    model = build(Plain(layers=3), {t: nn.Identity() for t in tasks}, input_shape=(3, 8, 8))
    s = Searcher(model, tasks, Partial(64, {"a": 0, "b": 1}), SearchConfig(quiet=True, batch_size=8))
    s.warmup(3)
    assert all(r["loss"]["b"] is not None for r in s.history["warmup"])  # padded with the ignore index

    only_a = Labelled(64, {"a": 0})
    s = Searcher(build(Plain(layers=3), {t: nn.Identity() for t in tasks}, input_shape=(3, 8, 8)), tasks, only_a,
                 SearchConfig(quiet=True, batch_size=8))
    s.warmup(2)
    assert all(r["loss"]["b"] is None for r in s.history["warmup"])
    with pytest.raises(ValueError, match=r"task 'b': target"):
        Searcher(s.model, tasks, only_a, SearchConfig(quiet=True, batch_size=8, allow_missing=False)).warmup(1)


# --- bad input ----------------------------------------------------------------------------------------


def _model(names: tuple[str, ...] = ("a", "b")):
    return build(Plain(layers=2), {t: nn.Identity() for t in names}, input_shape=(3, 8, 8))


def test_bad_input_is_named() -> None:
    data = Labelled(32, {"a": 0, "b": 1})
    tasks = {"a": Segmentation("a", 3), "b": Segmentation("b", 3)}
    with pytest.raises(ValueError, match=r"task 'b': loss"):
        Searcher(_model(), {"a": tasks["a"]}, data, SearchConfig(quiet=True))
    with pytest.raises(ValueError, match=r"task 'b': loss"):
        Searcher(_model(), {"a": tasks["a"], "b": object()}, data, SearchConfig(quiet=True))
    with pytest.raises(ValueError, match=r"'policy' split is empty"):
        Searcher(_model(), tasks, (data, [], data), SearchConfig(quiet=True))
    with pytest.raises(ValueError, match=r"'val' split is empty"):
        Searcher(_model(), tasks, Labelled(2, {"a": 0, "b": 1}), SearchConfig(quiet=True))
    for target in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match=r"budget_target"):
            SearchConfig(budget_target=target)
    with pytest.raises(ValueError, match=r"budget_mode"):
        SearchConfig(budget_mode="min")
    wrong = Labelled(32, {"a": 0, "b": 1})
    wrong.y["b"] = wrong.y["b"].float()  # class indices as floats
    with pytest.raises(TaskInputError, match=r"task 'b': target"):
        Searcher(_model(), tasks, wrong, SearchConfig(quiet=True, batch_size=8)).warmup(1)
    wrong.y["b"] = wrong.y["b"].long()[:, 0]  # labels of the wrong shape
    with pytest.raises(TaskInputError, match=r"task 'b': target: shape"):
        Searcher(_model(), tasks, wrong, SearchConfig(quiet=True, batch_size=8)).warmup(1)


def test_non_finite_loss_names_task_and_step() -> None:
    data = Labelled(64, {"a": 0, "b": 1})
    tasks = {"a": Segmentation("a", 3), "b": Segmentation("b", 3)}
    s = Searcher(_model(), tasks, data, SearchConfig(quiet=True, batch_size=8))
    s.warmup(2)
    with torch.no_grad():
        s.model.heads["b"] = nn.Sequential(nn.Identity())
        s.model.heads["b"].register_forward_hook(lambda m, i, o: o * float("nan"))
    with pytest.raises(FloatingPointError, match=r"task 'b'.*step 2"):
        s.warmup(1)
