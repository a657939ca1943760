"""TFUP / TFUP-T (strategies/tfup.py) against closed forms written out element by element, the representative-sample
selection on hand-made scores, and the transductive template's blindness to target labels."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from ctta.strategies.tfup import (
    TFUP,
    TFUPT,
    kl_matrix,
    kl_similarity,
    marginal_entropy_loss,
    select_representative,
    shots_for,
    tfup_logits,
)
from torch.utils.data import Dataset

from ctta.templates.transductive import UnlabelledImages


def _kl(p, q) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def test_kl_matrix_is_the_pairwise_kl():
    g = torch.Generator().manual_seed(0)
    p, q = F.softmax(torch.randn(4, 3, generator=g), -1), F.softmax(torch.randn(5, 3, generator=g), -1)
    want = torch.tensor([[_kl(a.tolist(), b.tolist()) for b in q] for a in p])
    assert torch.allclose(kl_matrix(p, q), want, atol=1e-6)


def test_similarity_is_two_minus_twice_the_minmaxed_zscore_of_the_kl():
    g = torch.Generator().manual_seed(1)
    w, keys, feats = (F.normalize(torch.randn(n, 6, generator=g), dim=-1) for n in (3, 5, 4))
    pk, pf = F.softmax(10 * keys @ w.t(), -1), F.softmax(10 * feats @ w.t(), -1)
    sim = kl_similarity(keys, feats, w)
    for i in range(4):
        kl = [_kl(pf[i].tolist(), pk[j].tolist()) for j in range(5)]
        mean = sum(kl) / 5
        std = math.sqrt(sum((v - mean) ** 2 for v in kl) / 4)  # unbiased, as torch.std
        z = [(v - mean) / std for v in kl]
        want = [2 * (1 - (v - min(z)) / (max(z) - min(z))) for v in z]
        assert sim[i].tolist() == pytest.approx(want, abs=1e-5)
    assert torch.allclose(sim.max(1).values, torch.full((4,), 2.0))
    assert torch.allclose(sim.min(1).values, torch.zeros(4))


def test_tfup_logits_closed_form():
    """One image, two keys of different classes: ``100 cos(f, w) + alpha sum_k exp(-beta (1 - cos(f, k) sim_k))``."""
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    keys = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # un-normalised: TFUP normalises them
    f = torch.tensor([[3.0, 4.0]])  # cos with the classes: 0.6, 0.8
    values = torch.eye(2)
    sim = kl_similarity(F.normalize(keys, dim=-1), F.normalize(f, dim=-1), w)[0]  # two keys: (2, 0) after min-max
    assert sorted(sim.tolist()) == pytest.approx([0.0, 2.0], abs=1e-6)
    alpha, beta = 0.3, 1.0
    want = [100 * 0.6 + alpha * math.exp(-beta * (1 - 0.6 * sim[0].item())),
            100 * 0.8 + alpha * math.exp(-beta * (1 - 0.8 * sim[1].item()))]  # fmt: skip
    assert tfup_logits(f, w, keys, values, alpha, beta)[0].tolist() == pytest.approx(want, rel=1e-6)
    assert tfup_logits(f, w, keys, values, 0.0, beta)[0].tolist() == pytest.approx([60.0, 80.0], rel=1e-6)


def test_selection_keeps_the_prototypical_candidates_of_each_class():
    """Class 0's four most probable rows (shots=2 -> 2*2 candidates): two alike, one less alike and an outlier; the
    two with the lowest summed KL to the candidates are kept (the brute-force sum agrees), the outlier never."""
    probs = torch.tensor([
        [0.70, 0.20, 0.10],  # 0: alike
        [0.62, 0.05, 0.33],  # 1: less alike
        [0.68, 0.16, 0.16],  # 2: the centre of the three
        [0.98, 0.01, 0.01],  # 3: most probable, an outlier
        [0.10, 0.80, 0.10],  # 4
        [0.15, 0.70, 0.15],  # 5
        [0.05, 0.90, 0.05],  # 6
        [0.34, 0.33, 0.33],  # 7
    ])  # fmt: skip
    idx, labels = select_representative(probs, 2)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    cand0 = [3, 0, 1, 2]
    score = {j: sum(_kl(probs[j].tolist(), probs[k].tolist()) for k in cand0) for j in cand0}
    assert set(idx[:2].tolist()) == set(sorted(cand0, key=score.get)[:2]) == {0, 2}
    assert 3 not in idx[:2].tolist()


def test_shot_counts_follow_the_reference():
    assert shots_for(200, 10, 0.3) == 9  # floor(6) clamped up to 9
    assert shots_for(500, 10, 0.3) == 15
    assert shots_for(4000, 10, 0.3) == 16  # clamped down to 16
    assert shots_for(200, 10, 0.75, hi=None) == 15
    assert shots_for(4000, 10, 0.75, hi=None) == 300


def test_marginal_entropy_loss_is_minus_the_entropy_of_the_mean():
    assert marginal_entropy_loss(torch.zeros(3, 4)).item() == pytest.approx(-math.log(4), abs=1e-5)
    logits = torch.tensor([[10.0, 0.0], [0.0, 10.0]])  # confident and opposite: the mean is uniform
    assert marginal_entropy_loss(logits).item() == pytest.approx(-math.log(2), abs=1e-3)


class _NoLabel(tuple):
    """An ``(image, label)`` item whose label cannot be read: indexing past 0 and unpacking raise."""

    def __getitem__(self, k):
        if k != 0:
            raise AssertionError("the strategy read a target label")
        return super().__getitem__(0)

    def __iter__(self):
        raise AssertionError("the strategy unpacked a target item (image and label)")


class _Hostile(Dataset):
    """Target images whose labels raise on access (item ``[1]`` and ``.targets``)."""

    def __init__(self, n: int) -> None:
        self.x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return _NoLabel((self.x[i], "label"))

    @property
    def targets(self):
        raise AssertionError("the strategy read the targets")


@pytest.mark.parametrize("cls", [TFUP, TFUPT])
def test_transductive_fit_never_reads_a_target_label(cls, tiny):
    names = ["zero", "one", "two"]
    kw = {"epochs": 2, "warmup_epochs": 1, "batch_size": 8} if cls is TFUPT else {"batch_size": 8}
    s = cls(model=tiny, classnames=names, device="cpu", **kw)
    s.adapt(UnlabelledImages(_Hostile(30)))
    assert s.model.keys.shape == (3 * 9, s.model.weights.shape[1])  # clamp(30 * 0.3 / 3) = 9 shots per class
    assert s.model.values.sum(0).tolist() == [9.0, 9.0, 9.0]
    with torch.no_grad():
        out = s.predict(torch.rand(4, 3, 32, 32))
    assert out.shape == (4, 3) and torch.isfinite(out).all()


def test_tfup_t_trains_its_adapters_only(tiny):
    s = TFUPT(model=tiny, classnames=["a", "b"], device="cpu", epochs=3, warmup_epochs=1, batch_size=8)
    clip_before = {k: v.clone() for k, v in s.model.clip.state_dict().items()}
    res_before = s.model.text_res.detach().clone()
    s.adapt(UnlabelledImages(_Hostile(24)))
    assert not torch.equal(s.model.text_res, res_before)
    assert all(torch.equal(v, clip_before[k]) for k, v in s.model.clip.state_dict().items())


def test_episodic_reset_restores_the_adapters_and_empties_the_cache(tiny):
    """Each target domain starts from the same state: after an experience, episodic mode resets what was adapted."""
    s = TFUPT(model=tiny, classnames=["a", "b"], device="cpu", epochs=2, warmup_epochs=1, batch_size=8)
    s.snapshot()
    before = {n: p.detach().clone() for n, p in s.model.named_parameters() if p.requires_grad}
    s.adapt(UnlabelledImages(_Hostile(24)))
    assert len(s.model.keys) and not torch.equal(s.model.text_res, before["text_res"])
    s.reset()
    assert len(s.model.keys) == 0 and len(s.model.values) == 0
    assert all(torch.equal(p, before[n]) for n, p in s.model.named_parameters() if p.requires_grad)
