"""VPTSP-G on Stanford Online Products: the shipped SOP recipe (configs/vptspg.yaml, the reference's sop_small) and
the retrieval neighbours computed in query chunks (SOP's 60,502 test images) equal to the one-matrix computation."""

from __future__ import annotations

from pathlib import Path

import torch
from ctta.strategies.vptspg.strategy import use_bank

from ctta.retrieval_metrics import map_at_r, neighbours, recall_at_k
from ctta.runner.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_sop_recipe_is_the_reference_sop_small():
    cfg = load_config(ROOT / "configs/vptspg.yaml", ["scenario.dataset=sop"])
    s = cfg.strategy.params if hasattr(cfg.strategy, "params") else cfg.strategy
    get = (lambda k: s[k]) if isinstance(s, dict) else (lambda k: getattr(s, k))
    want = {"optimizer": "adamw", "lr": 0.0001, "lr_proxy": 0.05, "weight_decay": 0.0001, "epochs": 120,
            "cosine_length": 120, "lr_min": 5.0e-5, "batch_size": 32, "samples_per_class": 1, "n_prompts": 90,
            "n_class_prompts": 5, "bias_ratio": 0.2, "memory_bank": True, "embed_dim": 384}  # fmt: skip
    assert {k: get(k) for k in want} == want
    assert tuple(get("recall_ks")) == (1, 10, 100, 1000)
    assert use_bank("auto", 11318)  # what auto would pick for SOP's training classes too


def test_chunked_neighbours_equal_one_matrix():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(42, 6, generator=g)  # no near-ties (a chunk's matmul may round differently in the last bit)
    labels = torch.randint(0, 6, (42,), generator=g)
    whole = neighbours(emb, 10, chunk=4096)
    for chunk in (5, 16, 41):
        assert torch.equal(neighbours(emb, 10, chunk=chunk), whole)
    assert all(q not in whole[q].tolist() for q in range(42))
    assert recall_at_k(emb, labels, (1, 10, 100)).keys() == {1, 10, 100}
    assert 0.0 <= map_at_r(emb, labels) <= 1.0
