"""A_auc / A_last / A_avg / F_last definitions (Si-Blurry / MVP) on hand-made histories; top-k against torchmetrics."""

from __future__ import annotations

import pytest

from ctta.metrics import AnytimeAccuracy, f_last


def test_f_last_official_excludes_never_correct_and_new_classes():
    # task ends: t0 sees classes 0,1 ; t1 adds 2 ; last (t2) adds 3
    h = [
        {0: (8, 10), 1: (0, 10)},  # class 1 never correct before the last task -> excluded
        {0: (6, 10), 1: (0, 10), 2: (10, 10)},
        {0: (5, 10), 1: (3, 10), 2: (4, 10), 3: (9, 10)},  # class 3 first seen in the last task -> excluded
    ]
    eps = 1e-5
    want = ((8 / (10 + eps) - 5 / (10 + eps)) + (10 / (10 + eps) - 4 / (10 + eps))) / 2
    assert f_last(h, "official") == pytest.approx(want, abs=1e-12)


def test_f_last_standard_includes_every_earlier_class():
    h = [{0: (8, 10), 1: (0, 10)}, {0: (5, 10), 1: (3, 10), 2: (1, 1)}]
    assert f_last(h, "standard") == pytest.approx(((0.8 - 0.5) + (0.0 - 0.3)) / 2)
    # a perfect class reads 0.99999 in the official variant
    assert f_last([{0: (10, 10)}, {0: (0, 10)}], "official") == pytest.approx(10 / (10 + 1e-5))


def test_f_last_needs_two_task_ends_and_valid_variant():
    assert f_last([{0: (1, 1)}]) == 0.0
    with pytest.raises(ValueError, match="valid"):
        f_last([], "bogus")


def test_anytime_result_uses_periodic_for_auc_and_task_end_for_last():
    m = AnytimeAccuracy()
    m.periodic = [(1000, 0.2), (2000, 0.4)]
    m.task_end = [(1500, 0.5), (2600, 0.7)]
    m.task_end_per_class = [{0: (5, 10)}, {0: (7, 10), 1: (0, 1)}]
    r = m.result()
    assert r["A_auc"] == pytest.approx(0.3)
    assert r["A_last"] == pytest.approx(0.7)
    assert r["A_avg"] == pytest.approx(0.6)
    assert r["F_last"] == pytest.approx(5 / (10 + 1e-5) - 7 / (10 + 1e-5))
    s = AnytimeAccuracy()
    s.load_state_dict(m.state_dict())
    assert s.result() == r


@pytest.mark.parametrize("k", [1, 3, 5])
def test_top_k_accuracy_metric_equals_torchmetrics(k):
    from types import SimpleNamespace

    import torch
    from torchmetrics.functional.classification import multiclass_accuracy

    from ctta.metrics import TopKAccuracy

    g = torch.Generator().manual_seed(k)
    logits, y = torch.randn(40, 10, generator=g), torch.randint(0, 10, (40,), generator=g)
    m = TopKAccuracy(k)
    m.before_eval(None)
    for lo in range(0, 40, 16):  # mini-batches of an evaluation
        m.after_eval_iteration(SimpleNamespace(mb_output=logits[lo : lo + 16], mb_y=y[lo : lo + 16]))
    want = multiclass_accuracy(logits, y, num_classes=10, top_k=k, average="micro")
    assert m.result() == pytest.approx(float(want), abs=1e-7)
