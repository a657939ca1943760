"""ProAPO (``strategies/proapo``): template-set classifier equals a direct computation, pools and official settings,
the evolutionary loop's official sort quirk, confusion groups by hand, a seeded search is reproducible, the run writes
its search history (artifact hook) and nothing trains."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from ctta.strategies.proapo import ProAPO, ProAPOConfig, with_official
from ctta.strategies.proapo.describe import confusion_groups, kmeans_groups
from ctta.strategies.proapo.evolve import Evolution, EvolveSettings
from ctta.strategies.proapo.pools import build_pool, read_pool, with_dataset_types

from ctta.clip_prompting.search import FewShotFeatures, SearchHistory, TemplateBank, fill
from ctta.clip_prompting.text_cache import class_embeddings
from tests._conformance_cases import tiny_clip
from tests.helpers import ROOT, run_smoke

NAMES = ["zero", "one", "two", "three", "four"]
SMALL = dict(templates="tiny_digits", descriptions="builtin:digits", init_seed=3, epochs=2, num_top=2, num_add=2,
             num_remove=2, num_replace=2, num_mutation=2, num_crossover=2, epochs_outer=1, epochs_inner=2,
             num_dependent_top=2, num_dependent_add=2, num_dependent_remove=2, num_dependent_replace=2,
             num_dependent_mutation=2, num_dependent_crossover=2)  # fmt: skip


def _strategy(**kw) -> ProAPO:
    model, tok = tiny_clip()
    return ProAPO(model=model, tokenizer=tok, classnames=NAMES, device="cpu", **{**SMALL, **kw})


def _feats(strategy: ProAPO, n_per: int = 3, seed: int = 0) -> FewShotFeatures:
    """Image features near the baseline text embeddings (so the scores are not all equal), seeded."""
    g = torch.Generator().manual_seed(seed)
    head = strategy.model.text_features()
    x = head.repeat_interleave(n_per, 0) + 0.8 * torch.randn(len(NAMES) * n_per, head.shape[1], generator=g)
    return FewShotFeatures(F.normalize(x, dim=-1), torch.arange(len(NAMES)).repeat_interleave(n_per), 20.0)


def test_template_set_embedding_equals_direct_computation():
    s = _strategy()
    bank = TemplateBank(s.model, s.pool, NAMES)
    ids = [0, 3, 5]
    direct = class_embeddings(s.model.clip, s.model.tokenizer, [[fill(s.pool[i], c) for i in ids] for c in NAMES])
    torch.testing.assert_close(bank.set_embedding(ids), direct, rtol=1e-5, atol=1e-6)


def test_pools_and_dataset_types_by_hand():
    assert with_dataset_types(["a photo of a {}."], "cub")[:5] == [
        "a photo of a {}.", "a photo of a {}, a type of bird.", "a photo of a bird: {}.", "a bird of a {}.",
        "a bird photo of a {}."]  # fmt: skip
    pool = build_pool("imagenet_80", "dtd")
    assert pool[0] == "a photo of a {}." and len(pool) == len(set(pool))
    assert build_pool("defilip_6", "euro_sat", dataset_types=False)[0] == "a centered satellite photo of a {}."
    assert len(read_pool("filip")) == 8 * len(json.loads((read_pool.__globals__["DATA"] / "filip.json").read_text())
                                              ["suffix"])  # fmt: skip
    with pytest.raises(FileNotFoundError, match="template pool 'nope' not found"):
        read_pool("nope")


def test_official_settings_dtd_vit_b32():
    cfg, table = with_official(ProAPOConfig(dataset="dtd", official=True, descriptions="x.json"))
    assert cfg.weights == (0.0, 0.0, 0.5, 10.0) and cfg.specific_weights == (0.0, 0.5, 0.0, 10.0)
    assert cfg.description_sample and cfg.num_max_search_group == 4 and cfg.epochs_outer == 3 and table
    assert with_official(ProAPOConfig(dataset="dtd"))[0] == ProAPOConfig(dataset="dtd")  # off by default


def _evolution(quirk: bool, epochs: int = 2) -> tuple[Evolution, SearchHistory]:
    h = SearchHistory()
    pool = list(range(10))
    settings = EvolveSettings(epochs=epochs, num_top=2, num_add=2, num_remove=0, num_replace=0, num_mutation=0,
                              num_crossover=0, sort_quirk=quirk)  # fmt: skip
    return Evolution(pool, lambda items: (float(len(items)), {}), settings, random.Random(0), h), h


def test_sort_quirk_never_selects_the_last_epoch():
    evo, h = _evolution(quirk=True)
    best = evo.run([[0], [1]])  # fitness = set size: each epoch's adds are bigger than every earlier set
    sizes = {r["step"]: max(len(x["candidate"]) for x in h.rows if x["step"] == r["step"]) for r in h.rows}
    assert len(best.items) == sizes[1] < sizes[2]  # the best of epoch 1, not of the last epoch (2)
    evo, h = _evolution(quirk=False)
    assert len(evo.run([[0], [1]]).items) == max(len(r["candidate"]) for r in h.rows)


def test_evolution_deduplicates_candidates():
    evo, h = _evolution(quirk=False, epochs=3)
    evo.run([[0], [1]])
    sets = [frozenset(r["candidate"]) for r in h.rows]
    assert len(sets) == len(set(sets))


def test_confusion_groups_by_hand():
    # texts = identity, so a sample's logits are its (scaled) scores; top-5 of 6 classes leaves one class out
    rows = [[9, 0, 4, 3, 2, 1], [9, 4, 0, 3, 2, 1],  # class 0: top-5 leaves out 1, then 2 (CE margin 5/|v|)
            [0, 6, 1.5, 1, 0.5, 0.2],  # class 1: leaves out 0; the largest margin, so the lowest CE: seeds first
            [0.1, 0.2, 3, 2.5, 2.4, 2.3], [0.1, 0.2, 2.3, 3, 2.4, 2.5], [0.1, 0.2, 2.3, 2.4, 3, 2.5],
            [0.1, 0.2, 2.3, 2.4, 2.5, 3]]  # fmt: skip
    feats = FewShotFeatures(F.normalize(torch.tensor(rows), dim=-1), torch.tensor([0, 0, 1, 2, 3, 4, 5]), 10.0)
    # 100 %: a class joins when it is in the top-5 of every sample of the seed; 3, 4, 5 join both groups
    assert confusion_groups(feats, torch.eye(6), threshold=100.0) == [[1, 2, 3, 4, 5], [0, 3, 4, 5]]
    # 50 %: class 0's samples each leave out one of 1, 2: both are confused with 0 in half of them
    assert confusion_groups(feats, torch.eye(6), threshold=50.0) == [[1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]]


def test_seeded_search_reproducible_and_texts():
    def run(seed):
        s = _strategy(init_seed=seed)
        texts = s.search(_feats(s), NAMES)
        return s.history.rows, texts, s

    rows_a, texts_a, s = run(3)
    rows_b, texts_b, _ = run(3)
    assert rows_a == rows_b and texts_a == texts_b
    assert run(4)[0] != rows_a
    assert {r["stage"].split("/")[0] for r in rows_a} == {"templates", "descriptions"}
    # the head's texts: best template set x chosen items (plain name or " " + description)
    for name, texts in zip(NAMES, texts_a):
        expect = [fill(t, name) + (f" {d}" if d else "") for d in s.chosen_descriptions[name] for t in s.best_templates]
        assert texts == expect


def test_agnostic_mode_uses_templates_only():
    s = _strategy(mode="agnostic")
    texts = s.search(_feats(s), NAMES)
    assert texts == [[fill(t, n) for t in s.best_templates] for n in NAMES]
    assert all(r["stage"] == "templates" for r in s.history.rows)


def test_bad_choice_and_missing_descriptions_refused(tmp_path):
    with pytest.raises(ValueError, match="grouping='faiss'"):
        _strategy(grouping="faiss")
    with pytest.raises(FileNotFoundError, match="data/dataset/dtd/category_description/<source>.json"):
        _strategy(dataset="dtd", descriptions=str(tmp_path / "CuPL_full.json"))


def test_run_writes_history_and_nothing_trains(tmp_path):
    summary = run_smoke("proapo_digits", tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["artifacts"] == ["search_history.json", "proapo_prompts.json"]  # no plot with log.plot=false
    rows = json.loads((tmp_path / "search_history.json").read_text())
    assert rows and {"step", "candidate", "fitness", "top1", "top5", "ce", "redundancy"} <= set(rows[0])
    assert summary["base_acc"] > 0.8 and summary["new_acc"] > 0.8  # the shipped trained CLIP, not chance
    assert rows[0]["candidate"] == ["a photo of a {}."] and max(r["fitness"] for r in rows) > rows[0]["fitness"]
    s = _strategy()
    assert not [p for p in s.model.parameters() if p.requires_grad]  # nothing is declared trainable


def test_kmeans_groups_two_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1.0, 0]])
    emb = centres.repeat_interleave(3, 0) + 0.05 * torch.randn(6, 4, generator=g)  # classes 0-2 and 3-5
    feats = FewShotFeatures(F.normalize(emb, dim=-1), torch.arange(6), 10.0)
    groups = kmeans_groups(feats, emb, seed=1234)
    assert sorted(map(sorted, groups)) == [[0, 1, 2], [3, 4, 5]]


def test_add_more_weighted_moves_the_edit_size_table():
    h = SearchHistory()
    pool = list(range(32))
    settings = EvolveSettings(epochs=2, num_top=2, num_add=3, num_remove=3, num_replace=3, num_mutation=2,
                              num_crossover=2, add_mode="more", weighted=True)  # fmt: skip
    evo = Evolution(pool, lambda items: (float(sum(items)) / 10, {}), settings, random.Random(1), h, baseline=0.0,
                    item_weight={i: float(i) for i in pool}, mutation=lambda e, k: random.Random(e).sample(pool, k))
    evo.run([[0], [1]])
    assert len(evo.sizes["add"].weights) == int(math.log2(32)) - int(math.log2(2))  # the reference's table size
    assert evo.sizes["add"].weights != [1.0] * 4  # momentum updates from the candidates' fitness
    first = {len(r["candidate"]) for r in h.rows if r["op"] == "add" and r["step"] == 1}
    assert first and first <= {2, 3, 5, 9}  # epoch 1's parents are single items: 1 + 2**j, j < 4


def test_class_incremental_searches_the_seen_classes(tmp_path):
    from ctta.runner.config import load_config
    from ctta.runner.run import run

    scenario = "scenario={name: class_incremental, dataset: digits, n_experiences: 2, img_size: 32}"
    cfg = load_config(ROOT / "configs" / "smoke" / "proapo_digits.yaml",
                      [scenario, f"log.out_dir={tmp_path}", "log.plot=false", "device=cpu"])  # fmt: skip
    run(cfg, verbose=False)
    rows = json.loads((tmp_path / "search_history.json").read_text())
    memory = [r for r in rows if r["op"] == "memory"]  # one pass over the pool per experience
    assert len(memory) == 2 * len(read_pool("tiny_digits"))
    second = memory[len(memory) // 2]["step"]
    assert second > memory[0]["step"]  # the second search continues the step count
    found = json.loads((tmp_path / "proapo_prompts.json").read_text())
    first, then = found["searches"]
    assert len(first["classes"]) == 5 and set(then["classes"]) > set(first["classes"]) and len(then["classes"]) == 10
    assert then["first_step"] == second and len(found["descriptions"]) == 10  # the seen classes, 5 + 5
