"""Task grouping, training half: TAG affinities and groups, candidate training per method, the grouped model."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from automtl.app.cli import main
from automtl.app.config import build_model, config_from_dict
from automtl.app.export import check_onnx, export_onnx
from automtl.grouping.model import GroupedModel, combine, selection_model
from automtl.grouping.run import config_networks, group_train, half_model
from automtl.grouping.table import GroupingError
from automtl.grouping.tag import TagTrainer, choose_groups, group_scores
from automtl.grouping.train import FULL, HALF, Candidate, CandidateTrainer, GroupTrainConfig, run_method
from automtl.search.loop import TrainConfig
from automtl.train.tasks import Depth

# --- TAG on a toy: two linear tasks on a shared linear layer ------------------------------------------------


class Pairs(Dataset):
    def __init__(self, n: int = 8) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 3, generator=g)
        self.y = {t: (torch.rand(n, 1, 1, 1, generator=g) + 0.5) for t in ("a", "b")}

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], {t: y[i] for t, y in self.y.items()}


class TwoLinear(nn.Module):
    task_names = ["a", "b"]

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Linear(3, 2, bias=False)
        self.heads = nn.ModuleDict({t: nn.Linear(2, 1, bias=False) for t in self.task_names})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.shared(x)
        return {t: self.heads[t](h).reshape(-1, 1, 1, 1) for t in self.task_names}


def _hand_affinity(model: TwoLinear, data: Pairs, lr: float) -> np.ndarray:
    """Z(i->j) = 1 - L_j(W - lr dL_i/dW) / L_j(W), with L the mean absolute error, computed directly."""
    w0 = model.shared.weight.detach().clone()
    heads = {t: model.heads[t].weight.detach() for t in ("a", "b")}

    def loss(w: torch.Tensor, t: str) -> torch.Tensor:
        return ((data.x @ w.T) @ heads[t].T - data.y[t].reshape(-1, 1)).abs().mean()

    z = np.zeros((2, 2))
    for i, ti in enumerate(("a", "b")):
        w = w0.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss(w, ti), w)
        for j, tj in enumerate(("a", "b")):
            z[i, j] = 1 - float(loss(w0 - lr * g, tj)) / float(loss(w0, tj))
    return z


def test_tag_affinity_matrix_equals_a_hand_computation_and_leaves_training_unchanged() -> None:
    data = Pairs(8)
    tasks = {t: Depth(t) for t in ("a", "b")}
    config = TrainConfig(batch_size=8, quiet=True, weight_optimizer="sgd", weight_lr=0.5, weight_momentum=0.0,
                         weight_decay=0.0)
    model = TwoLinear()
    expect = _hand_affinity(model, data, lr=0.5)
    trainer = TagTrainer(model, tasks, (data, data), config, every=1)
    trainer.train(1)
    aff = trainer.affinity()
    assert aff.count == 1 and aff.tasks == ("a", "b")
    np.testing.assert_allclose(aff.matrix, expect, rtol=1e-5, atol=1e-6)
    assert np.abs(expect).max() > 1e-3  # the lookahead moved the losses: the check is not vacuous
    # the same step without TAG gives the same weights (the lookaheads are undone)
    from automtl.search.trainer import Trainer

    plain = TwoLinear()
    Trainer(plain, tasks, (data, data), config).train(1)
    for p, q in zip(model.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p, q)


class DropLinear(TwoLinear):
    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.norm = nn.BatchNorm1d(2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.drop(self.norm(self.shared(x)))
        return {t: self.heads[t](h).reshape(-1, 1, 1, 1) for t in self.task_names}


def test_tag_leaves_random_draws_and_buffers_of_the_training_alone() -> None:
    from automtl.search.trainer import Trainer

    data = Pairs(8)
    tasks = {t: Depth(t) for t in ("a", "b")}
    config = TrainConfig(batch_size=4, quiet=True)
    tagged, plain = DropLinear(), DropLinear()
    t = TagTrainer(tagged, tasks, (data, data), config, every=1)
    t.train(4)
    Trainer(plain, tasks, (data, data), config).train(4)
    assert t.affinity().count == 4
    for (name, a), b in zip(tagged.state_dict().items(), plain.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_tag_trains_only_trunk_lookaheads_and_averages_every_k_steps() -> None:
    data = Pairs(8)
    tasks = {t: Depth(t) for t in ("a", "b")}
    trainer = TagTrainer(TwoLinear(), tasks, (data, data), TrainConfig(batch_size=4, quiet=True), every=2)
    assert trainer.shared_parameters() == [trainer.model.shared.weight]
    trainer.train(5)
    assert trainer.affinity().count == 3  # steps 0, 2, 4


def _brute_groups(z: np.ndarray, k: int) -> float:
    n = z.shape[0]
    groups = [g for s in range(1, n + 1) for g in itertools.combinations(range(n), s)]
    best = -np.inf
    for m in range(1, k + 1):
        for chosen in itertools.combinations(groups, m):
            if set().union(*chosen) != set(range(n)):
                continue
            per = []
            for a in range(n):
                scores = []
                for g in chosen:
                    if a in g:
                        others = [b for b in g if b != a]
                        scores.append(sum(z[b, a] for b in others) / len(others) if others else 0.0)
                per.append(max(scores))
            best = max(best, sum(per) / n)
    return best


def _value(z: np.ndarray, tasks: list[str], groups: list[tuple[str, ...]]) -> float:
    idx = [tuple(tasks.index(t) for t in g) for g in groups]
    return float(group_scores(z, idx).max(axis=0).mean())


@pytest.mark.parametrize("seed", range(4))
def test_tag_group_choice_is_the_brute_force_optimum(seed: int) -> None:
    rng = np.random.default_rng(seed)
    tasks = ["a", "b", "c", "d"]
    z = rng.normal(0, 0.1, (4, 4))
    for k in (1, 2, 3):
        groups = choose_groups(z, tasks, k)
        assert len(groups) <= k and set().union(*map(set, groups)) == set(tasks)
        assert _value(z, tasks, groups) == pytest.approx(_brute_groups(z, k))


def test_tag_group_choice_ties_and_errors() -> None:

    tasks = ["a", "b", "c"]
    assert choose_groups(np.zeros((3, 3)), tasks, 3) == [("a", "b", "c")]  # a tie: the fewest groups
    helps = np.array([[0, 1, -1], [1, 0, -1], [-1, -1, 0.0]])
    assert choose_groups(helps, tasks, 2) == [("c",), ("a", "b")]
    with pytest.raises(GroupingError, match="finite 3x3"):
        choose_groups(np.zeros((2, 2)), tasks, 1)


# --- candidates per method -------------------------------------------------------------------------------


class Scenes(Dataset):
    """Three regression tasks on 4x4 images: a and b the same target (they help each other), c another."""

    def __init__(self, n: int = 48) -> None:
        g = torch.Generator().manual_seed(2)
        self.x = torch.randn(n, 2, 4, 4, generator=g)
        base = self.x[:, :1].abs() + 0.5
        self.y = {"a": base, "b": base * 1.1, "c": self.x[:, 1:].abs() + 0.5}

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], {t: y[i] for t, y in self.y.items()}


def _factory(calls: list[tuple[tuple[str, ...], str]]):
    import automtl

    def make(tasks: tuple[str, ...], size: str) -> nn.Module:
        calls.append((tasks, size))
        width = 4 if size == HALF else 8
        trunk = nn.Sequential(nn.Conv2d(2, width, 3, padding=1), nn.ReLU())
        model = automtl.build(trunk, {t: nn.Conv2d(width, 1, 1) for t in tasks}, input_shape=(2, 4, 4))
        return model.derive(model.uniform_architecture("shared"))

    return make


def _trainer(tmp_path: Path, calls: list, steps: int = 3) -> CandidateTrainer:
    tasks = {t: Depth(t) for t in ("a", "b", "c")}
    return CandidateTrainer(tasks, _factory(calls), Scenes(), TrainConfig(batch_size=8, quiet=True),
                            GroupTrainConfig(steps=steps, esa_fraction=0.4), tmp_path)


def test_each_method_trains_only_what_it_needs_and_scores_on_fully_trained_networks(tmp_path: Path) -> None:
    calls: list = []
    ct = _trainer(tmp_path, calls)
    hoa = run_method(ct, "hoa", [1, 2])
    assert sorted(c for c in calls if len(c[0]) <= 2) == sorted(
        [(s, FULL) for s in [("a",), ("b",), ("c",), ("a", "b"), ("a", "c"), ("b", "c")]]
        + [((t,), HALF) for t in "abc"])
    trained_3 = [c for c in calls if len(c[0]) == 3]
    chose_3 = any(len(n.tasks) == 3 for r in hoa for n in r.selection.networks)
    assert bool(trained_3) == chose_3  # the 3-task network is trained only to score a selection holding it
    assert all(r.selection.scored and r.selection_seconds > 0 for r in hoa)
    n_before = len(calls)
    esa = run_method(ct, "esa", [1.5])
    early = [c for c in calls[n_before:]]
    assert len(early) >= 10  # all 7 subsets and 3 halves at 40% of the steps (plus any chosen one in full)
    assert ct.options.esa_steps == 1 and esa[0].selection.scored
    exhaustive = run_method(ct, "exhaustive", [1, 1.5, 3])
    assert [r.selection.cost <= r.budget for r in exhaustive] == [True] * 3
    # every method's scored loss is the chosen networks' test losses, each task read from its best network
    for r in [*hoa, *esa, *exhaustive]:
        for t, loss in r.selection.task_losses.items():
            rows = [ct.result(Candidate(n.tasks, HALF if n.cost == 0.5 else FULL, 3))["test"] for n in
                    r.selection.networks if t in n.tasks]
            assert loss == pytest.approx(min(row[t] for row in rows))
    # the exhaustive optimum at budget 3 is at least as good (on validation) as any single network
    val = ct.table(ct.candidates(3), "val")
    best = exhaustive[2].selection.estimated_loss
    assert all(best <= sum(n.losses.values()) + 1e-9 for n in val if len(n.tasks) == 3)


def test_candidates_are_kept_and_reused_across_runs(tmp_path: Path) -> None:
    calls: list = []
    run_method(_trainer(tmp_path, calls), "exhaustive", [2])
    assert len(calls) == 7 + 3
    again: list = []
    res = run_method(_trainer(tmp_path, again), "exhaustive", [2])
    assert again == [] and res[0].selection is not None  # every network came from its kept result
    kept = json.loads((tmp_path / "networks" / "a+b.full.3.json").read_text())
    assert set(kept["val"]) == {"a", "b"} and kept["seconds"] > 0
    # the kept weights give the trained network back: its validation losses are the recorded ones
    from automtl.search.trainer import evaluate

    ct = _trainer(tmp_path, again)
    cand = Candidate(("a", "b"), FULL, 3)
    net = ct.model(cand)
    loader = torch.utils.data.DataLoader(ct.splits[1], batch_size=64)
    ev = evaluate(net, {t: ct.tasks[t] for t in ("a", "b")}, loader)
    assert ev["loss"] == pytest.approx(kept["val"], rel=1e-5)


def test_budget_below_the_cheapest_cover_is_reported_not_raised(tmp_path: Path) -> None:
    res = run_method(_trainer(tmp_path, []), "exhaustive", [0.5, 1])
    assert res[0].selection is None and "cheapest" in res[0].note
    assert res[1].selection is not None


# --- the grouped model -----------------------------------------------------------------------------------


def test_grouped_model_equals_the_separate_networks_and_exports(tmp_path: Path) -> None:
    calls: list = []
    make = _factory(calls)
    nets = [make(("a", "b"), FULL), make(("c",), HALF), make(("b", "c"), FULL)]
    for net in nets:
        for p in net.parameters():
            nn.init.normal_(p, std=0.5)
        net.eval()
    grouped = combine(nets, {"a": 0, "b": 2, "c": 1}, ["a", "b", "c"]).eval()
    x = torch.randn(3, 2, 4, 4)
    out = grouped.as_dict(x)
    with torch.no_grad():
        torch.testing.assert_close(out["a"], nets[0].as_dict(x)["a"])
        torch.testing.assert_close(out["b"], nets[2].as_dict(x)["b"])
        torch.testing.assert_close(out["c"], nets[1].as_dict(x)["c"])
    rep = grouped.report(latency_shape=(1, 2, 4, 4))
    assert rep["total"]["params"] == sum(p.numel() for p in grouped.parameters())
    assert rep["total"]["params"] < sum(sum(p.numel() for p in n.parameters()) for n in nets)  # unread heads pruned
    assert rep["per_task"]["c"]["flops"] < rep["per_task"]["a"]["flops"] and rep["latency_ms"] > 0
    assert rep["served_by"] == {"a": "a+b", "b": "b+c", "c": "c"}
    export_onnx(grouped, tmp_path / "g.onnx", (2, 4, 4))
    diffs = check_onnx(tmp_path / "g.onnx", grouped, x)
    assert set(diffs) == {"a", "b", "c"}
    grouped.save(tmp_path / "g.pt")
    again = GroupedModel.load(tmp_path / "g.pt").eval()
    assert again.served_by == grouped.served_by and again.networks == grouped.networks
    with torch.no_grad():
        for t, want in out.items():
            torch.testing.assert_close(again.as_dict(x)[t], want, rtol=0, atol=0)
    assert sum(p.numel() for p in again.parameters()) == rep["total"]["params"]
    torch.save({"format": "other"}, tmp_path / "bad.pt")
    with pytest.raises(GroupingError, match="bad.pt: not an automtl grouped model"):
        GroupedModel.load(tmp_path / "bad.pt")


def test_selection_model_reads_each_task_from_its_best_chosen_network() -> None:
    from automtl.grouping import Network, Table, select

    table = Table(["a", "b", "c"], [Network(("a", "b"), 1.0, {"a": 0.2, "b": 0.5}), Network(("b",), 0.5, {"b": 0.3}),
                                    Network(("c",), 0.5, {"c": 0.1}), Network(("a", "b", "c"), 1.0,
                                                                               {"a": 0.3, "b": 0.4, "c": 0.4})])
    sel = select(table, 2)
    assert [n.name for n in sel.networks] == ["a+b", "b", "c"] and sel.served_by["b"].name == "b"
    make = _factory([])
    models = {(n.tasks, n.cost): make(n.tasks, HALF if n.cost == 0.5 else FULL).eval() for n in sel.networks}
    grouped = selection_model(sel, models)
    x = torch.randn(2, 2, 4, 4)
    for t in sel.tasks:
        src = models[(sel.served_by[t].tasks, sel.served_by[t].cost)]
        torch.testing.assert_close(grouped.as_dict(x)[t], src.as_dict(x)[t])


# --- from a config, and the command line ------------------------------------------------------------------

_CONFIG = {
    "backbone": {"name": "tiny_cnn", "input_shape": [3, 16, 16], "trunk_output": "block"},
    "tasks": {t: {"kind": t, "head": "dense", "hidden_channels": 8} for t in ("depth", "edges")},
    "data": {"name": "synthetic_scenes", "images": 24, "size": 16},
    "search": {"batch_size": 8, "eval_batch_size": 32},
}


def test_half_network_of_a_config_has_about_half_the_flops() -> None:
    cfg = config_from_dict(_CONFIG)
    full = build_model(cfg, ["depth"])
    half = half_model(cfg, full)
    ratio = half.graph.flops / full.graph.flops
    assert 0.4 < ratio < 0.6
    derived = config_networks(cfg)(("depth",), HALF)
    assert derived(torch.randn(2, 3, 16, 16))[0].shape == (2, 1, 16, 16)


def test_group_train_command_writes_tables_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import yaml

    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(_CONFIG))
    out = tmp_path / "run"
    args = ["group", "train", str(cfg_path), "--out", str(out), "--steps", "2", "--budgets", "1,1.5,2", "--quiet"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "exhaustive" in text and "tables and selections in" in text
    for name in ("val.csv", "test.csv", "selections.json", "group-run.json"):
        assert (out / name).is_file()
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "networks").iterdir()}
    assert len(stamps) == 2 * (3 + 2)  # a result and its weights per network
    assert main([*args, "--json", "--export"]) == 0  # resumed: nothing retrained
    data = json.loads(capsys.readouterr().out)
    assert [r["budget"] for r in data["results"]] == [1, 1.5, 2]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "networks").iterdir()} == stamps
    assert (out / "pictures" / "selection_exhaustive.png").stat().st_size > 0
    report = json.loads((out / "grouped" / "exhaustive_b2.json").read_text())
    assert (out / "grouped" / "exhaustive_b2.onnx").stat().st_size > 0
    assert set(report["per_task"]) == {"depth", "edges"} and report["latency_ms"] > 0
    assert report["test_loss"] == pytest.approx(data["results"][2]["selection"]["loss"])
    assert main(["group", "select", str(out / "val.csv"), "--budget", "2", "--score-with", str(out / "test.csv"),
                 "--json"]) == 0
    sel = json.loads(capsys.readouterr().out)
    assert sel["loss"] == pytest.approx(data["results"][2]["selection"]["loss"])
    # another config in the same folder is refused in one line
    assert main(["group", "train", str(cfg_path), "--out", str(out), "--steps", "3", "--quiet"]) == 2
    assert "another options" in capsys.readouterr().err


def test_group_train_tag_mode_from_python(tmp_path: Path) -> None:
    cfg = config_from_dict(_CONFIG)
    res = group_train(cfg, tmp_path / "tag", mode="tag", budgets=[1, 2],
                      options=GroupTrainConfig(steps=2, tag_every=1, half=False))
    tag = json.loads((tmp_path / "tag" / "tag.json").read_text())
    assert tag["count"] == 2 and len(tag["matrix"]) == 2
    assert (tmp_path / "tag" / "pictures" / "affinity.png").is_file()
    group_train(cfg, tmp_path / "tag", mode="hoa", budgets=[1], options=GroupTrainConfig(steps=2, tag_every=1,
                                                                                         half=False))
    kept = json.loads((tmp_path / "tag" / "selections.json").read_text())["results"]
    assert [r["method"] for r in kept] == ["tag", "tag", "hoa"]
    assert res[0].selection.networks[0].tasks == ("depth", "edges") and res[0].selection.scored
    assert len(res[1].selection.networks) in (1, 2)


def test_synthetic_scenes_fifth_target_shading_only_when_asked_for() -> None:
    from automtl.train.data import SyntheticScenes

    assert list(SyntheticScenes(2, size=16)[0][1]) == ["segmentation", "depth", "normals", "edges"]
    x, y = SyntheticScenes(2, size=16, tasks=("depth", "shading"))[1]
    assert y["shading"].shape == (1, 16, 16) and y["shading"].dtype == torch.float32
    assert 0.35 <= float(y["shading"].min()) and float(y["shading"].max()) <= 1.0
    assert float(y["shading"].std()) > 0  # lit shapes: not a constant map
