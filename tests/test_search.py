"""The discrete-search engine's pure parts (``ctta.clip_prompting.search_ops``) on hand-made inputs, checked against
hand computation: fitness scores and ProAPO's weighted fitness, the redundancy closed form, the edit operators and
their seeded reproducibility, the edit-size table's momentum update, candidate de-duplication and the history."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F

from ctta.clip_prompting.search_ops import (
    EditSizeTable,
    FewShotFeatures,
    SearchHistory,
    Seen,
    add_items,
    crossover,
    fitness_scores,
    mutate,
    propose,
    redundancy,
    remove_items,
    replace_items,
    weighted_fitness,
    weighted_sample,
)


def _feats():
    # three samples in 2-D, unit norm; classes 0, 1, 1
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    return FewShotFeatures(f, torch.tensor([0, 1, 1]), logit_scale=10.0)


def test_fitness_scores_by_hand():
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # class texts along the axes
    s = fitness_scores(_feats(), t)
    # logits: [10, 0], [0, 10], [6, 8] -> predictions 0, 1, 1: all right
    assert s["top1"] == 1.0 and s["top5"] == 1.0
    ce = [math.log(1 + math.exp(-10)), math.log(1 + math.exp(-10)), math.log(1 + math.exp(-2))]
    assert s["ce"] == pytest.approx(sum(ce) / 3, rel=1e-5)
    assert s["redundancy"] == pytest.approx(0.0, abs=1e-7)  # orthogonal classes


def test_fitness_scores_top1_miss_and_top5_cap():
    t = torch.tensor([[0.8, 0.6], [0.0, 1.0]])  # sample 2 (label 1): cos 0.96 vs 0.8 -> predicted 0
    s = fitness_scores(_feats(), t)
    assert s["top1"] == pytest.approx(2 / 3)
    assert s["top5"] == 1.0  # k capped at the 2 classes


def test_redundancy_closed_form():
    t = F.normalize(torch.randn(5, 7, generator=torch.Generator().manual_seed(0)), dim=-1)
    s = t @ t.t()
    by_hand = math.sqrt(sum(float(s[i, j]) ** 2 for i in range(5) for j in range(i + 1, 5)))
    assert redundancy(t) == pytest.approx(by_hand, rel=1e-5)
    # two classes at angle theta: R = |cos theta|
    assert redundancy(torch.tensor([[1.0, 0.0], [0.6, 0.8]])) == pytest.approx(0.6)
    assert redundancy(torch.tensor([[2.0, 0.0], [1.2, 1.6]])) == pytest.approx(0.6)  # rows are normalised


def test_weighted_fitness_sign_and_percent():
    s = {"top1": 0.5, "top5": 0.75, "ce": 1.2, "redundancy": 2.0}
    # 0.1*50 + 0.1*75 + 0.05*2 - 10*1.2 (redundancy with a PLUS sign, accuracies in percent)
    assert weighted_fitness(s) == pytest.approx(5 + 7.5 + 0.1 - 12)
    assert weighted_fitness(s, 0, 0.5, 0, 10) == pytest.approx(37.5 - 12)  # DTD ViT-B/32 stage-2 weights
    assert weighted_fitness(s, black_box=True) == pytest.approx(50.0)  # accuracy only


def test_weighted_sample_uniform_and_weighted():
    rng = random.Random(0)
    out = weighted_sample(rng, list("abcdef"), None, 3)
    assert len(set(out)) == 3 and set(out) <= set("abcdef")
    # a near-zero weight is (almost) never drawn; reverse prefers it
    counts = {"a": 0, "b": 0}
    for _ in range(200):
        counts[weighted_sample(rng, ["a", "b"], [100.0, 0.0], 1)[0]] += 1
    assert counts["a"] > 190
    assert weighted_sample(random.Random(1), ["a", "b"], [1.0, 0.0], 1, reverse=True) == ["b"]
    # negative weights are shifted, not refused
    assert len(weighted_sample(rng, ["a", "b", "c"], [-3.0, -1.0, 2.0], 2)) == 2
    with pytest.raises(ValueError, match="cannot draw 4"):
        weighted_sample(rng, [1, 2, 3], None, 4)


def test_add_remove_replace_by_hand():
    pool = ["t0", "t1", "t2", "t3", "t4"]
    rng = random.Random(3)
    added = add_items(rng, ["t0", "t1"], pool, 2)
    assert added[:2] == ["t0", "t1"] and len(added) == 4 and len(set(added)) == 4 and set(added) <= set(pool)
    assert add_items(rng, ["t0", "t1"], pool, 4) is None  # only 3 left
    removed = remove_items(rng, ["t0", "t1", "t2"], 2)
    assert len(removed) == 1 and removed[0] in {"t0", "t1", "t2"}
    assert remove_items(rng, ["t0", "t1"], 2) is None  # would leave nothing
    replaced = replace_items(rng, ["t0", "t1", "t2"], pool, 2)
    assert len(replaced) == 3 and len(set(replaced) & {"t3", "t4"}) == 2  # both outside items came in
    assert replace_items(rng, ["t0", "t1", "t2"], pool, 3) is None  # only 2 outside


def test_mutate_and_crossover_by_hand():
    rng = random.Random(5)
    m = mutate(rng, list("abcdef"), 3)
    assert len(set(m)) == 3
    assert mutate(rng, list("ab"), 3) is None
    parents = [["a", "b", "c"], ["a", "b", "d"], ["a", "e"]]
    for _ in range(20):
        child = crossover(rng, parents)
        assert "a" in child and child[-1] == "a"  # the common item is kept, appended last
        assert 2 <= len(child) <= 5 and len(set(child)) == len(child)
    assert crossover(rng, [["a", "b"], ["a", "b"]]) is None  # nothing to recombine


def test_operators_are_seeded():
    def run(seed):
        rng, pool = random.Random(seed), [f"t{i}" for i in range(12)]
        return [add_items(rng, pool[:3], pool, 2), remove_items(rng, pool[:6], 2),
                replace_items(rng, pool[:4], pool, 2), mutate(rng, pool, 4), crossover(rng, [pool[:5], pool[3:8]])]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_edit_size_table_momentum():
    t = EditSizeTable(3, mode="linear", momentum=0.9, epsilon=1.0)
    assert t.weights == [1.0, 1.0, 1.0]
    t.update(1, fitness=5.0, baseline=3.0)  # 0.9*1 + 0.1*(5 + 1 - 3)
    assert t.weights[1] == pytest.approx(1.2)
    e = EditSizeTable(2, mode="exp", momentum=0.5, epsilon=1.0)
    e.update(0, fitness=2.0, baseline=0.0)  # 0.5*1 + 0.5*exp(2 - 1 - 0)
    assert e.weights[0] == pytest.approx(0.5 + 0.5 * math.e)
    rng = random.Random(0)
    assert {t.draw(rng, limit=0) for _ in range(20)} == {0}  # limit 0: only j = 0
    assert {t.draw(rng, weighted=False) for _ in range(100)} == {0, 1, 2}
    t.weights = [0.0, 0.0, 5.0]
    assert {t.draw(rng) for _ in range(20)} == {2}


def test_propose_deduplicates():
    seen = Seen()
    seen.add(["a", "b"])
    it = iter([["b", "a"], ["a"], None, ["a"], ["c"], ["d"]])
    out = list(propose(lambda: next(it, None), 2, seen, extra_tries=4))
    assert out == [["a"], ["c"]]  # the permuted duplicate, the None and the repeat are skipped
    assert ["c"] in seen and len(seen) == 3


def test_history_rows_best_json_plot(tmp_path):
    h = SearchHistory()
    h.append(0, ("a photo of a {}.",), {"fitness": 1.0, "top1": 0.5})
    h.append(1, {"x", "y"}, {"fitness": 3.0, "top1": 0.7}, op="add")
    h.append(1, ["z"], {"fitness": 3.0, "top1": 0.6})
    assert h.best()["candidate"] == ["x", "y"] and h.best()["op"] == "add"  # first of the tied best
    assert h.best(lambda r: r["step"] == 0)["fitness"] == 1.0
    h.to_json(tmp_path / "h.json")
    rows = json.loads((tmp_path / "h.json").read_text())
    assert [r["step"] for r in rows] == [0, 1, 1] and rows[0]["candidate"] == ["a photo of a {}."]
    h.plot(tmp_path / "h.png")
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fewshot_subset_relabels():
    f = FewShotFeatures(torch.eye(4), torch.tensor([0, 2, 1, 2]), 100.0)
    s = f.subset([2, 0])
    assert s.labels.tolist() == [1, 0, 0] and torch.equal(s.features, torch.eye(4)[[0, 1, 3]])


class _Artifacts:
    """A strategy stand-in with run artifacts (the runner's hook reads only these two methods)."""

    def __init__(self, data):
        self.data = data

    def run_artifacts(self):
        return self.data

    def plot_artifact(self, name, path):
        if name != "h":
            return False
        SearchHistory().plot(path)
        return True


def test_write_artifacts_files_names_and_refusals(tmp_path):
    from ctta.runner.results import write_artifacts
    from ctta.templates.base import StrategyBase

    names = write_artifacts(tmp_path, _Artifacts({"h": [{"step": 0, "x": float("nan")}], "other": {"a": 1}}))
    assert names == ["h.json", "h.png", "other.json"]
    assert json.loads((tmp_path / "h.json").read_text()) == [{"step": 0, "x": None}]  # JSON-safe
    assert write_artifacts(tmp_path, _Artifacts({"h": []}), plot=False) == ["h.json"]
    for bad in ("results", "../x", ".hidden", ""):
        with pytest.raises(ValueError, match="artifact name"):
            write_artifacts(tmp_path, _Artifacts({bad: 1}))
    assert StrategyBase.run_artifacts(None) == {} and StrategyBase.plot_artifact(None, "x", "p") is False
