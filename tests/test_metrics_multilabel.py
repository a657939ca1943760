"""mAP conventions, CF1/OF1 at 0.8 and task-averaged CIL metrics on hand-made examples (spec multilane §7, §12.6)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from ctta.strategies.multilane.metrics import (
    THRESHOLD,
    MultiLabelMetrics,
    TaskAveragedAccuracy,
    average_precision,
    f1_scores,
    mean_average_precision,
    seen_columns,
    task_average_summary,
)
from sklearn.metrics import average_precision_score


def test_average_precision_matches_sklearn_with_ties():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        n = int(torch.randint(2, 40, (1,), generator=g))
        scores = torch.randint(0, 6, (n,), generator=g).float() / 5  # many ties
        target = (torch.rand(n, generator=g) > 0.6).float()
        if target.sum() == 0:
            target[0] = 1
        want = average_precision_score(target.numpy(), scores.numpy())
        assert average_precision(scores, target) == pytest.approx(want, abs=1e-12)


def test_average_precision_hand_example():
    # ranking: pos, neg, pos -> precision at the two positives 1 and 2/3, recall steps 1/2 each
    assert average_precision(torch.tensor([0.9, 0.8, 0.7]), torch.tensor([1.0, 0, 1])) == pytest.approx(
        0.5 * 1 + 0.5 * 2 / 3
    )
    assert math.isnan(average_precision(torch.tensor([0.3, 0.2]), torch.tensor([0.0, 0.0])))


def test_map_conventions_skip_vs_zero():
    scores = torch.tensor([[0.9, 0.2, 0.4], [0.1, 0.8, 0.3], [0.7, 0.6, 0.9]])
    targets = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 1, 0]])  # column 2 has no positive
    ap0 = average_precision_score([1, 0, 0], [0.9, 0.1, 0.7])
    ap1 = average_precision_score([0, 1, 1], [0.2, 0.8, 0.6])
    assert mean_average_precision(scores, targets, "skip") == pytest.approx((ap0 + ap1) / 2)
    assert mean_average_precision(scores, targets, "zero") == pytest.approx((ap0 + ap1) / 3)
    with pytest.raises(ValueError, match="no_positive"):
        mean_average_precision(scores, targets, "drop")


def test_map_skip_on_all_columns_equals_seen_class_map():
    # unseen columns (2, 3): logits and targets set to 0 -> no positives -> skipped (torchmetrics 0.11.2 semantics)
    g = torch.Generator().manual_seed(1)
    seen = torch.rand(30, 2, generator=g)
    tseen = (torch.rand(30, 2, generator=g) > 0.5).float()
    scores = torch.cat([seen, torch.full((30, 2), 0.5)], 1)
    targets = torch.cat([tseen, torch.zeros(30, 2)], 1)
    assert mean_average_precision(scores, targets, "skip") == pytest.approx(mean_average_precision(seen, tseen))
    assert mean_average_precision(scores, targets, "zero") == pytest.approx(mean_average_precision(seen, tseen) / 2)


def test_f1_hand_example_threshold_is_strict():
    scores = torch.tensor([[0.9, 0.1, 0.85, 0.8], [0.7, 0.95, 0.2, 0.1], [0.81, 0.3, 0.9, 0.0], [0.2, 0.5, 0.1, 0.3]])
    targets = torch.tensor([[1.0, 0, 1, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0]])
    # class F1: 0.5, 2/3, 1, and 0 for the empty class (0.8 is not > 0.8)
    cf1, of1 = f1_scores(scores, targets)
    assert cf1 == pytest.approx((0.5 + 2 / 3 + 1 + 0) / 4)
    assert of1 == pytest.approx(2 * 0.8 * (4 / 6) / (0.8 + 4 / 6))  # tp 4, predicted 5, true 6
    assert f1_scores(torch.zeros(2, 2), torch.ones(2, 2)) == (0.0, 0.0)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="same shape"):
        f1_scores(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="same shape"):
        mean_average_precision(torch.zeros(3), torch.zeros(3))


def _strategy(exp_id, trained, logits, y, seen=None):
    exp = SimpleNamespace(current_experience=exp_id, origin_stream=SimpleNamespace(name="test"))
    if seen is not None:
        exp.classes_seen_so_far = set(seen)
    clock = SimpleNamespace(train_exp_counter=trained, train_iterations=0)
    return SimpleNamespace(experience=exp, clock=clock, mb_output=logits, mb_y=y, is_training=False)


def _run(metric, strat):
    metric.before_eval_exp(strat)
    metric.after_eval_iteration(strat)
    return metric.after_eval_exp(strat)


def test_multilabel_plugin_restricts_to_seen_columns_and_tracks_amap(monkeypatch):
    import ctta.strategies.multilane.metrics as mm

    monkeypatch.setattr(mm, "get_metric_name", lambda k, s, **kw: k)
    m = MultiLabelMetrics()
    logits = torch.tensor([[3.0, -2.0, 5.0], [-1.0, 2.0, 5.0], [2.0, 1.0, -5.0]])
    y = torch.tensor([[1.0, 0, 0], [0, 1, 1], [1, 1, 0]])
    out = {v.name: v.value for v in _run(m, _strategy(0, 1, logits, y, seen={0, 1}))}
    want = mean_average_precision(torch.sigmoid(logits[:, :2]), y[:, :2])
    assert out["mAP"] == pytest.approx(want) and out["amAP"] == pytest.approx(want)
    assert out["CF1"] == pytest.approx(f1_scores(torch.sigmoid(logits[:, :2]), y[:, :2])[0])
    out2 = {v.name: v.value for v in _run(m, _strategy(1, 2, logits, y, seen={0, 1, 2}))}
    assert out2["amAP"] == pytest.approx((want + out2["mAP"]) / 2)
    # an experience that is not the one just trained reports mAP but does not enter amAP
    out3 = {v.name: v.value for v in _run(m, _strategy(0, 2, logits, y, seen={0, 1}))}
    assert "amAP" not in out3 and m.map_after_task == {0: want, 1: out2["mAP"]}
    assert seen_columns(SimpleNamespace(), 3).all()


def test_task_average_summary_acc_forgetting_bwt():
    r = {1: {0: 0.9}, 2: {0: 0.7, 1: 0.8}, 3: {0: 0.75, 1: 0.6, 2: 0.5}}
    assert task_average_summary(r, 1) == {"Top1_Acc_TaskAvg": 0.9}
    s = task_average_summary(r, 3)
    assert s["Top1_Acc_TaskAvg"] == pytest.approx((0.75 + 0.6 + 0.5) / 3)
    assert s["Forgetting_TaskAvg"] == pytest.approx(((0.9 - 0.75) + (0.8 - 0.6)) / 2)
    assert s["BWT_TaskAvg"] == pytest.approx(((0.75 - 0.9) + (0.6 - 0.8)) / 2)
    assert task_average_summary(r, 4) == {}


def test_task_averaged_plugin_ignores_multi_hot_and_fills_matrix(monkeypatch):
    import ctta.strategies.multilane.metrics as mm

    monkeypatch.setattr(mm, "get_metric_name", lambda k, s, **kw: k)
    m = TaskAveragedAccuracy()
    s = _strategy(0, 1, torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    _run(m, s)
    assert m.matrix == {1: {0: 0.5}}
    _run(m, _strategy(1, 1, torch.zeros(2, 2), torch.zeros(2, 2)))  # multi-hot: ignored
    out = {v.name: v.value for v in m.after_eval(s)}
    assert out == {"Top1_Acc_TaskAvg": 0.5}


def _scores_targets(seed=0, n=50, c=6):
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(n, c, generator=g, dtype=torch.float64)
    s[:, 2] = (s[:, 2] * 4).round() / 4  # tied scores
    s[0, 0] = THRESHOLD  # exactly at the threshold: not a positive prediction
    t = (torch.rand(n, c, generator=g) > 0.6).long()
    t[:, c - 1] = 0  # a class without positives
    return s, t


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_equals_torchmetrics(seed):
    from torchmetrics.functional.classification import multilabel_average_precision

    s, t = _scores_targets(seed)
    c = s.shape[1]
    # torchmetrics >= 1.x scores a class without positives 0 ("zero"); it computes in float32 (hence 1e-6)
    want_zero = float(multilabel_average_precision(s, t, num_labels=c, average="macro"))
    assert mean_average_precision(s, t, "zero") == pytest.approx(want_zero, abs=1e-6)
    want_skip = float(multilabel_average_precision(s[:, :-1], t[:, :-1], num_labels=c - 1))
    assert mean_average_precision(s, t, "skip") == pytest.approx(want_skip, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cf1_of1_equal_torchmetrics_macro_and_micro_f1(seed):
    from torchmetrics.functional.classification import multilabel_f1_score

    s, t = _scores_targets(seed)
    kw = dict(num_labels=s.shape[1], threshold=THRESHOLD, zero_division=0)
    cf1, of1 = f1_scores(s, t)
    assert cf1 == pytest.approx(float(multilabel_f1_score(s, t, average="macro", **kw)), abs=1e-6)
    assert of1 == pytest.approx(float(multilabel_f1_score(s, t, average="micro", **kw)), abs=1e-6)
