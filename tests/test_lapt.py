"""LAPT: the wccm mixing and loss on hand-made features, retrieval of negative-label images from a folder, and
training runs whose retrieved or generated (tiny random text-to-image pipeline) negative images enter the batches
with the negative labels."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from ctta.strategies.lapt import negative_image_items, wccm_logits, wccm_loss

from tests.helpers import SMOKE, save_rgb


def test_wccm_mixes_normalised_image_and_template_features():
    f, t = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 0.5]])
    g = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    m = torch.tensor([[0.25, 0.75]]) / math.sqrt(0.25**2 + 0.75**2)  # lam 0.25: 0.25 * e1 + 0.75 * e2, normalised
    expected = 10 * m @ F.normalize(g, dim=-1).t()
    assert torch.allclose(wccm_logits(f, t, g, 0.25, 10.0), expected)
    assert torch.allclose(wccm_logits(f, t, g, 1.0, 1.0), F.normalize(f, dim=-1) @ F.normalize(g, dim=-1).t())


def test_wccm_loss_is_cross_entropy_of_the_mixed_logits():
    f, t, g = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # m = e1: logits (s, 0); CE for label 1 = log(1 + e^s)
    assert wccm_loss(f, t, g, torch.tensor([1]), 0.5, 3.0).item() == pytest.approx(math.log(1 + math.exp(3)))


def test_negative_image_items_reads_one_folder_per_label(tmp_path):
    save_rgb(tmp_path / "coat" / "b.png")
    save_rgb(tmp_path / "coat" / "a.jpg")
    (tmp_path / "coat" / "notes.txt").write_text("not an image")
    save_rgb(tmp_path / "other" / "c.png")
    items = negative_image_items(tmp_path, ["bag", "coat"], offset=5)
    assert items == [(str(tmp_path / "coat" / "a.jpg"), 6), (str(tmp_path / "coat" / "b.png"), 6)]
    with pytest.raises(FileNotFoundError, match="negative_images"):
        negative_image_items(tmp_path / "missing", ["coat"], 0)


class _Labels(SupervisedPlugin):
    """Records the labels of every training mini-batch."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def after_training_iteration(self, strategy, **kwargs) -> None:
        self.seen.append(strategy.mb_y.clone())


def test_lapt_trains_on_retrieved_negative_images(tmp_path):
    from ctta.runner.config import load_config
    from ctta.runner.run import execute, prepare

    for word in ("shirt", "coat", "bag", "boot", "tree", "cloud", "river", "red", "small", "dark"):
        for k in range(2):
            save_rgb(tmp_path / "neg" / word / f"{k}.png", colour=(20 * k, 100, 200))
    cfg = load_config(SMOKE / "lapt_digits_ood.yaml", [f"log.out_dir={tmp_path / 'run'}", "log.progress=false",
                                                        "device=cpu", f"strategy.negative_images={tmp_path / 'neg'}",
                                                        "strategy.epochs=1"])  # fmt: skip
    ctx = prepare(cfg)
    spy = _Labels()
    ctx.strategy.plugins.append(spy)
    execute(ctx, verbose=False)
    labels = torch.cat(spy.seen)
    n_id = len(ctx.strategy.model.classnames)
    assert (labels >= n_id).any() and (labels < n_id).any()  # both ID and retrieved negative images were trained on
    summary = json.loads((tmp_path / "run" / "results.json").read_text())["summary"]
    assert 0 <= summary["auroc_far"] <= 1 and 0 <= summary["id_acc"] <= 1


def test_lapt_trains_on_generated_negative_images(tmp_path):
    pytest.importorskip("diffusers")
    from ctta.runner.config import load_config
    from ctta.runner.run import execute, prepare

    cache = tmp_path / "t2i"
    overrides = [f"log.out_dir={tmp_path / 'run'}", "log.progress=false", "device=cpu", "strategy.epochs=1",
                 "strategy.negative_generate=1", "strategy.generate_model=tiny-random", "strategy.generate_steps=2",
                 f"strategy.generate_cache_dir={cache}"]  # fmt: skip
    cfg = load_config(SMOKE / "lapt_digits_ood.yaml", overrides)
    ctx = prepare(cfg)
    spy = _Labels()
    ctx.strategy.plugins.append(spy)
    execute(ctx, verbose=False)
    negatives = ctx.strategy.model.train_negatives
    assert sorted(p.parent.name for p in cache.glob("*/*/0.png")) == sorted(negatives)  # one image per negative
    labels = torch.cat(spy.seen)
    n_id = len(ctx.strategy.model.classnames)
    assert set(labels[labels >= n_id].tolist()) == set(range(n_id, n_id + len(negatives)))


def test_mining_several_counts_encodes_the_candidates_once(monkeypatch):
    """LAPT's test and training negatives come from one mining pass: each candidate list is encoded once, and the
    labels equal separate minings."""
    from types import SimpleNamespace

    import ctta.clip_prompting.ood as ood
    from tests._conformance_cases import tiny_clip

    model, tok = tiny_clip()
    cfg = SimpleNamespace(nouns=("cat", "dog", "car", "tree", "boat", "lamp"), adjectives=("red", "big", "soft"),
                          wordnet="", percentile=0.95)  # fmt: skip
    names = ["zero", "one", "two"]
    separate = [ood.mine_for(model, tok, names, cfg, n) for n in (6, 3)]
    calls = []
    real = ood.FrozenCLIPTeacher
    monkeypatch.setattr(ood, "FrozenCLIPTeacher", lambda *a, **k: calls.append(tuple(a[2])) or real(*a, **k))
    assert ood.mine_for(model, tok, names, cfg, (6, 3)) == separate
    assert len(calls) == len(set(calls)) == 3  # ID prompts, adjective prompts, noun prompts: once each
