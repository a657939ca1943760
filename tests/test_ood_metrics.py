"""OOD metrics (``ctta.ood_metrics``) equal scikit-learn's on the same scores, with OpenOOD's conventions (ID positive,
higher score = more ID), ties included; the plugin's stream roles and full-spectrum pooling."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from ctta.ood_metrics import OODDetectionMetric, fpr_at_tpr, ood_metrics, stream_role


def _sklearn(id_s, ood_s):
    s, y = np.r_[id_s, ood_s], np.r_[np.ones(len(id_s)), np.zeros(len(ood_s))]
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    p_in, r_in, _ = skm.precision_recall_curve(y, s)
    p_out, r_out, _ = skm.precision_recall_curve(1 - y, -s)
    return {"fpr95": fpr[np.argmax(tpr >= 0.95)], "auroc": skm.roc_auc_score(y, s),
            "aupr_in": skm.auc(r_in, p_in), "aupr_out": skm.auc(r_out, p_out)}  # fmt: skip


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_metrics_equal_sklearn(seed, ties):
    rng = np.random.default_rng(seed)
    n_id, n_ood = rng.integers(5, 60, 2)
    id_s = rng.integers(0, 5, n_id).astype(float) if ties else rng.normal(1.0, 1.0, n_id)
    ood_s = rng.integers(0, 5, n_ood).astype(float) if ties else rng.normal(0.0, 1.0, n_ood)
    ours, ref = ood_metrics(id_s, ood_s), _sklearn(id_s, ood_s)
    assert ours == pytest.approx(ref, abs=1e-12)


def test_hand_made_values():
    """ID {4, 3, 2, 1}, OOD {2.5, 0}: AUROC 6/8 (pairs in order);
    the 95 % TPR threshold (1) accepts one of the two OOD samples."""
    m = ood_metrics([4, 3, 2, 1], [2.5, 0])
    assert m["auroc"] == pytest.approx(6 / 8)
    assert m["fpr95"] == pytest.approx(0.5)
    assert ood_metrics([2, 3], [0, 1]) == pytest.approx({"fpr95": 0, "auroc": 1, "aupr_in": 1, "aupr_out": 1})


def test_openood_v15_fpr_variant_takes_ood_as_positive():
    id_s, ood_s = np.array([4.0, 3, 2, 1]), np.array([2.5, 0])
    s, y = np.r_[id_s, ood_s], np.r_[np.zeros(4), np.ones(2)]
    fpr, tpr, _ = skm.roc_curve(y, -s, drop_intermediate=False)
    assert fpr_at_tpr(id_s, ood_s, ood_positive=True) == pytest.approx(fpr[np.argmax(tpr >= 0.95)])


def test_empty_or_nonfinite_scores_raise():
    with pytest.raises(ValueError, match="need ID and OOD"):
        ood_metrics([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        ood_metrics([np.nan], [1.0])


def test_stream_roles():
    assert stream_role("test_stream") == ("id", "")
    assert stream_role("test_near_ssb_hard") == ("near", "ssb_hard")
    assert stream_role("test_far_noise_stream") == ("far", "noise")
    assert stream_role("test_csid_gaussian_noise_3") == ("csid", "gaussian_noise_3")
    assert stream_role("train") == ("", "")


def test_plugin_groups_sets_and_pools_full_spectrum():
    m = OODDetectionMetric()
    id_s, csid, near, far = np.array([3.0, 4]), np.array([1.0, 2.5]), np.array([0.0, 2]), np.array([-1.0, 5])
    m.scores = {"test": ("id", "", id_s), "test_csid_c": ("csid", "c", csid), "test_near_a": ("near", "a", near),
                "test_far_b": ("far", "b", far)}  # fmt: skip
    m.correct = {"test": (1, 2)}
    res = m.result()
    assert res["id_acc"] == 0.5
    assert res["auroc_a"] == pytest.approx(ood_metrics(id_s, near)["auroc"]) == res["auroc_near"]
    assert res["fpr95_far"] == pytest.approx(ood_metrics(id_s, far)["fpr95"])
    assert res["fs_auroc_a"] == pytest.approx(ood_metrics(np.r_[id_s, csid], near)["auroc"])
