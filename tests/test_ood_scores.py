"""MCM and NegLabel scores against closed forms on hand-made features; the negative-label miner on a toy vocabulary;
the WordNet loaders; an OOD run end to end (the MCM and NegLabel smoke configs) writing every metric."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ctta.ood_scores import load_wordnet_words, mcm_score, mine_negative_labels, neglabel_score, percentile_closeness
from tests.helpers import SMOKE


def test_mcm_closed_form():
    cos = torch.tensor([[0.3, 0.1, -0.2], [0.0, 0.0, 0.0]])
    e = [math.exp(0.3 / 0.5), math.exp(0.1 / 0.5), math.exp(-0.2 / 0.5)]
    assert mcm_score(cos, 0.5).tolist() == pytest.approx([e[0] / sum(e), 1 / 3])


def test_neglabel_closed_form_one_group():
    s, n = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 3.0, -1.0]])
    num = math.exp(1) + math.exp(2)
    expected = num / (num + math.exp(0.5) + math.exp(3) + math.exp(-1))
    assert neglabel_score(s, n, groups=1).item() == pytest.approx(expected)


def test_neglabel_groups_follow_the_seeded_permutation():
    s, n = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    perm = torch.randperm(4, generator=torch.Generator().manual_seed(7))
    num = math.exp(1) + 1
    parts = [num / (num + sum(math.exp(float(n[0, j])) for j in idx)) for idx in perm.view(2, 2)]
    assert neglabel_score(s, n, groups=2, seed=7).item() == pytest.approx(sum(parts) / 2)
    with pytest.raises(ValueError, match="groups"):
        neglabel_score(s, n, groups=5)


def test_percentile_closeness_takes_the_floor_index():
    ids = torch.eye(4)  # cosines of a candidate = its coordinates (unit vectors)
    cand = torch.tensor([[0.1, 0.2, 0.3, 0.9274]])
    # sorted cosines of the normalised candidate; index floor(0.5 * 4) = 2 -> the third smallest
    c = cand / cand.norm()
    assert percentile_closeness(cand, ids, 0.5).item() == pytest.approx(c[0, 2].item())
    assert percentile_closeness(cand, ids, 0.95).item() == pytest.approx(c[0, 3].item())  # floor(3.8) = 3


def _toy_encoder():
    """Hand-made text features: the word inside the prompt picks a fixed 3-d direction."""
    table = {"cat": [1, 0, 0], "dog": [0.9, 0.1, 0], "tiger": [0.95, 0, 0.05], "car": [0, 1, 0], "rock": [0, 0, 1],
             "cloud": [0.1, 0.2, 1], "furry": [0.8, 0.2, 0], "metal": [0.1, 0.9, 0.1], "blue": [0, 0.1, 1],
             "soft": [0.7, 0, 0.3]}  # fmt: skip

    def encode(texts):
        return torch.tensor([next(v for w, v in table.items() if f" {w} " in f" {t.strip('.')} ") for t in texts])

    return encode


def test_miner_picks_the_least_close_candidates_proportionally():
    encode = _toy_encoder()
    nouns = ["car", "rock", "cloud", "tiger", "cat", "rock"]  # "cat" is an ID class, "rock" repeats: removed
    adjectives = ["furry", "metal", "blue", "soft", "cloud"]  # "cloud" is also a noun: removed
    picked = mine_negative_labels(encode, ["cat", "dog"], nouns, adjectives, n=4)
    # pools: 4 nouns (car, cloud, rock, tiger), 4 adjectives -> 2 + 2; least close to {cat, dog} first
    assert picked == ["blue", "metal", "rock", "car"]  # closeness: blue .011, metal .218; rock 0, car .110
    assert mine_negative_labels(encode, ["cat", "dog"], nouns, adjectives, n=4) == picked  # deterministic
    with pytest.raises(ValueError, match="cannot select"):
        mine_negative_labels(encode, ["cat"], ["car"], [], n=2)


def test_wordnet_loaders(tmp_path):
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "wordnet_nouns.txt").write_text("car\nrock\n")
    (tmp_path / "lists" / "wordnet_adjs.txt").write_text("blue\n")
    assert load_wordnet_words(tmp_path / "lists") == (["car", "rock"], ["blue"])
    (tmp_path / "dict").mkdir()
    (tmp_path / "dict" / "index.noun").write_text("  1 licence header\nice_cream n 1 0 1 0 07609840\n")
    (tmp_path / "dict" / "index.adj").write_text("  1 licence header\nblue a 1 0 1 0 00370869\n")
    assert load_wordnet_words(tmp_path / "dict") == (["ice cream"], ["blue"])
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        load_wordnet_words(tmp_path / "missing")


@pytest.mark.parametrize("name", ["mcm", "neglabel"])
def test_ood_run_end_to_end_writes_every_metric(name, tmp_path):
    from ctta.runner.config import load_config
    from ctta.runner.run import execute, prepare

    cfg = load_config(SMOKE / f"{name}_digits_ood.yaml", [f"log.out_dir={tmp_path}", "log.progress=false",
                                                           "device=cpu", "strategy.epochs=0"])  # fmt: skip
    execute(prepare(cfg), verbose=False)
    summary = json.loads((tmp_path / "results.json").read_text())["summary"]
    for metric in ("fpr95", "auroc", "aupr_in", "aupr_out"):
        for key in ("near", "far", "digits_held_out", "noise"):
            assert 0 <= summary[f"{metric}_{key}"] <= 1, f"{metric}_{key}"
    assert 0 <= summary["id_acc"] <= 1
    if name == "mcm":  # full-spectrum variant with the covariate-shifted ID set
        assert "fs_auroc_far" in summary
