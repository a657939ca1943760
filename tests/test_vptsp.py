"""Retrieval metrics of the VPTSP-G track (Recall@K, MAP@R) against brute-force computations."""

from __future__ import annotations

import math

import torch

from ctta.retrieval_metrics import map_at_r, recall_at_k


def _ranked(emb, q):
    """Other samples sorted by cosine similarity to sample ``q`` (descending; ties by index)."""
    cos = lambda a, b: float(a @ b) / (math.sqrt(float(a @ a)) * math.sqrt(float(b @ b)))  # noqa: E731
    others = [j for j in range(len(emb)) if j != q]
    return sorted(others, key=lambda j: (-cos(emb[q], emb[j]), j))


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (30,), generator=g)
    emb = torch.randn(30, 6, generator=g) + 1.5 * F_onehot(labels, 6)
    return emb, labels


def F_onehot(labels, d):  # noqa: N802
    return torch.nn.functional.one_hot(labels, d).float()


def test_recall_at_k_matches_brute_force():
    emb, labels = _data()
    got = recall_at_k(emb, labels, ks=(1, 2, 4, 8))
    for k in (1, 2, 4, 8):
        want = sum(any(labels[j] == labels[q] for j in _ranked(emb, q)[:k]) for q in range(30)) / 30
        assert abs(got[k] - want) < 1e-6


def test_map_at_r_matches_brute_force():
    emb, labels = _data(1)
    aps = []
    for q in range(30):
        r = int((labels == labels[q]).sum()) - 1
        if r == 0:
            continue
        rel = [int(labels[j] == labels[q]) for j in _ranked(emb, q)[:r]]
        aps.append(sum(sum(rel[: i + 1]) / (i + 1) * rel[i] for i in range(r)) / r)
    assert abs(map_at_r(emb, labels) - sum(aps) / len(aps)) < 1e-6


def test_perfect_embedding_scores_one_and_hand_case():
    labels = torch.tensor([0, 0, 1, 1])
    emb = F_onehot(labels, 3)
    assert recall_at_k(emb, labels, ks=(1,)) == {1: 1.0} and map_at_r(emb, labels) == 1.0
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])  # every nearest neighbour is the wrong class
    assert recall_at_k(emb, labels, ks=(1,))[1] == 0.0 and map_at_r(emb, labels) == 0.0
