"""GRAM (unofficial, from the paper arXiv 2303.06571): the regulating function and the first-order meta-gradients
against their closed forms on hand-made quadratics, the hierarchical clustering's task count, stage 2's regulated
optimiser step against a hand computation, what trains in each stage, the stage-1 cache and its missing-file
messages, the pair files, the ViT-B/16 count, base-to-new end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from avalanche.training.plugins import EvaluationPlugin
from ctta.strategies.gram import (
    GRAMConfig,
    GRAMModel,
    caption_set_loss,
    cluster_tasks,
    generated_pairs,
    meta_loss,
    meta_train,
    pair_features,
    read_pairs,
    regulate,
    split_task,
)

from ctta.data.digits import DIGIT_NAMES
from ctta.registry import STRATEGIES
from tests import _conformance_cases as cc
from tests.helpers import assert_base_new_hm, run_smoke

NAMES = list(DIGIT_NAMES[:4])
TINY_META = dict(meta_data="generated", meta_image_clusters=2, meta_text_clusters=2, meta_iters=2, meta_batch=2,
                 task_size=4, inner_lr=0.05, meta_lr=0.05)  # fmt: skip


def _strategy(**kwargs):
    model, tok = cc.tiny_clip()
    kw = dict(epochs=1, batch_size=8, prec="fp32", warmup_epochs=0, lr=0.05, n_ctx=2, ctx_init="") | kwargs
    return STRATEGIES.get("gram").builder(model=model, tokenizer=tok, classnames=list(DIGIT_NAMES),
                                          evaluator=EvaluationPlugin(loggers=[]), **kw)  # fmt: skip


def test_regulate_closed_form():
    g = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    beta = torch.tensor([[0.0, np.log(3.0)], [-np.log(3.0), 0.0]], dtype=torch.float32)
    # 2 sigmoid(beta): 1, 2 * 3/4, 2 * 1/4, 1
    torch.testing.assert_close(regulate(g, beta), torch.tensor([[1.0, -3.0], [0.25, 4.0]]))
    torch.testing.assert_close(regulate(g, torch.zeros(2, 2)), g)


@pytest.mark.parametrize("steps", [1, 2])
def test_first_order_meta_gradients_closed_form(steps):
    a, b = torch.tensor([1.0, -1.0, 2.0]), torch.tensor([0.0, 3.0, -2.0])
    theta0 = torch.tensor([0.5, 0.5, -1.0], requires_grad=True)
    beta = torch.tensor([0.0, 1.0, -2.0], requires_grad=True)
    lr = 0.3
    support = lambda t: 0.5 * ((t - a) ** 2).sum()  # noqa: E731  grad = t - a
    query = lambda t: 0.5 * ((t - b) ** 2).sum()  # noqa: E731  grad = t - b
    meta_loss(theta0, beta, support, query, steps, lr).backward()
    s = torch.sigmoid(beta.detach())
    theta, gsum = theta0.detach().clone(), torch.zeros(3)
    for _ in range(steps):  # by hand: theta_{k+1} = theta_k - lr * 2 s * (theta_k - a)
        g = theta - a
        gsum += g
        theta = theta - lr * 2 * s * g
    h = theta - b
    torch.testing.assert_close(theta0.grad, h)  # FOMAML: dL_Q/dtheta_0 = h
    torch.testing.assert_close(beta.grad, -2 * lr * s * (1 - s) * h * gsum)


def test_unregulated_inner_step():
    theta0 = torch.tensor([2.0], requires_grad=True)
    loss = meta_loss(theta0, None, lambda t: (t**2).sum(), lambda t: (t**2).sum(), 1, 0.25)  # 2 - 0.25 * 4 = 1
    torch.testing.assert_close(loss, torch.tensor(1.0))


def test_split_task_halves():
    rng = np.random.default_rng(0)
    s, q = split_task(np.arange(10, 17), rng, size=100)
    assert len(s) == 3 and len(q) == 4 and sorted(s + q) == list(range(10, 17))
    s, q = split_task(np.arange(40), rng, size=5)
    assert len(s) == len(q) == 5 and not set(s) & set(q)


def test_hierarchical_clustering_forms_the_stated_tasks():
    # 3 image blobs; inside each, the captions form 2 text blobs: 3 x 2 = 6 tasks, each one (image, text) blob
    rng = np.random.default_rng(0)
    img_c, txt_c = np.eye(3) * 10, np.eye(4) * 10
    img, txt, leaf = [], [], []
    for i in range(3):
        for j in range(2):
            for _ in range(5):
                img.append(img_c[i] + rng.normal(0, 0.1, 3))
                txt.append(txt_c[(i + j) % 4] + rng.normal(0, 0.1, 4))
                leaf.append((i, j))
    tasks = cluster_tasks(np.array(img), np.array(txt), n_image=3, n_text=2)
    assert len(tasks) == 6
    assert sorted(len({leaf[k] for k in t}) for t in tasks) == [1] * 6  # each task is exactly one leaf
    assert sorted(k for t in tasks for k in t) == list(range(30))
    assert len(cluster_tasks(np.array(img), np.array(txt), n_image=3, n_text=1)) == 3


def test_generated_pairs_and_their_tasks(tiny):
    model, tok = tiny
    pairs = generated_pairs(n=48, img_size=32)
    assert len(pairs) == 48 and pairs.images.shape == (48, 3, 32, 32)
    assert not {w for c in pairs.captions for w in c.split()} & {*DIGIT_NAMES}  # disjoint from the digits
    f, t = pair_features(model, tok, pairs, "cpu")
    assert f.shape == t.shape == (48, model.text_projection.shape[1])
    assert len(cluster_tasks(f, t, n_image=3, n_text=2)) == 6


def test_stage_one_lowers_the_meta_loss(tiny):
    """The meta-learned start adapts better: the mean query loss after one regulated inner step, over every task
    and fixed random splits, drops (tiny CLIP, 120 generated pairs, 20 outer steps: 2.27 -> 1.53 measured)."""
    model, tok = tiny
    cfg = GRAMConfig(meta_image_clusters=3, meta_text_clusters=2, meta_iters=20, meta_batch=2, task_size=8,
                     inner_lr=0.01, meta_lr=0.01)  # fmt: skip
    m = GRAMModel(model, tok, NAMES, cfg)
    pairs = generated_pairs(n=120, img_size=32)
    f, t = pair_features(model, tok, pairs, "cpu")
    tasks = cluster_tasks(f, t, 3, 2)

    def mean_query_loss(theta, beta):
        rng, losses = np.random.default_rng(123), []
        for task in tasks * 2:
            s, q = (caption_set_loss(m, f, pairs.captions, i) for i in split_task(task, rng, 8))
            losses.append(meta_loss(theta.clone().requires_grad_(True), beta, s, q, 1, 0.01).item())
        return float(np.mean(losses))

    before = mean_query_loss(m.ctx.detach(), m.regulator)
    m.set_classnames(NAMES)
    state = meta_train(m, pairs, cfg, "cpu")
    assert m.classnames == NAMES  # the model's head is given back
    assert mean_query_loss(state["ctx"], state["regulator"]) < before - 0.1


def test_caption_set_loss_is_ce_over_distinct_captions(tiny):
    model, tok = tiny
    m = GRAMModel(model, tok, NAMES, GRAMConfig(n_ctx=2, ctx_init=""))
    feats = torch.randn(4, model.text_projection.shape[1])
    caps = ["a cat", "a dog", "a cat", "a bird"]
    with torch.no_grad():
        got = caption_set_loss(m, feats, caps, [0, 1, 2])(m.ctx)
        m.set_classnames(["a cat", "a dog"])
        want = F.cross_entropy(m.logits(feats[:3], m.text(m.ctx)), torch.tensor([0, 1, 0]))
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("reg", [True, False])
def test_stage2_step_is_the_regulated_sgd_step(reg):
    s = _strategy(regulate=reg)
    m = s.model
    beta = torch.linspace(-2, 2, m.ctx.numel()).view_as(m.ctx)
    g = torch.linspace(1, -1, m.ctx.numel()).view_as(m.ctx)
    m.regulator.copy_(beta)
    theta = m.ctx.detach().clone()
    s.meta_done = True  # no stage 1
    s.make_optimizer()
    m.ctx.grad = g.clone()
    s.optimizer_step()
    d = (2 * torch.sigmoid(beta) * g if reg else g) + 5e-4 * theta  # first SGD step: momentum buffer = d
    torch.testing.assert_close(m.ctx.detach(), theta - 0.05 * d)


def test_only_the_declared_parameters_train():
    s = _strategy(**TINY_META)
    m = s.model
    assert [n for n, p in m.named_parameters() if p.requires_grad] == ["ctx"]
    start = {k: v.clone() for k, v in m.state_dict().items()}
    state = s.meta_stage()  # stage 1 (train() would run it before its optimiser)
    assert state["tasks"] == 4
    after_meta = {k: v.clone() for k, v in m.state_dict().items()}
    assert {k for k, v in after_meta.items() if not torch.equal(v, start[k])} == {"ctx", "regulator"}
    train, test = cc.digits(40, 20)
    s.train(cc.class_incremental(train, test).train_stream[0])  # stage 2: stage 1 is not run again
    changed = {k for k, v in m.state_dict().items() if not torch.equal(v, after_meta[k])}
    assert changed == {"ctx"}  # beta stays as stage 1 set it; the CLIP as it was
    assert torch.isfinite(s.loss)


def test_training_steps_go_through_the_regulator():
    train, test = cc.digits(40, 20)
    moved = {}
    for reg in (True, False):
        s = _strategy(regulate=reg)
        s.model.regulator.fill_(-30.0)  # r_beta ~ 2e-13 * g: only weight decay moves ctx
        theta = s.model.ctx.detach().clone()
        s.train(cc.class_incremental(train, test).train_stream[0])
        moved[reg] = (s.model.ctx.detach() - theta).norm() / theta.norm()
    assert moved[True] < 1e-3 < moved[False]


def test_stage_one_is_cached_and_missing_files_name_the_setting(tmp_path):
    path = tmp_path / "meta.pt"
    a = _strategy(**TINY_META, meta_init=str(path))
    a.meta_stage()
    assert path.is_file()
    b = _strategy(meta_init=str(path))  # load only
    state = b.meta_stage()
    torch.testing.assert_close(b.model.ctx.detach(), a.model.ctx.detach())
    torch.testing.assert_close(b.model.regulator, a.model.regulator)
    assert not torch.equal(state["regulator"], torch.zeros_like(state["regulator"]))
    with pytest.raises(FileNotFoundError, match="meta_init"):
        _strategy(meta_init=str(tmp_path / "none.pt"))
    with pytest.raises(FileNotFoundError, match="meta_data"):
        _strategy(meta_data=str(tmp_path / "pairs.jsonl"))
    assert _strategy().meta_stage() is None  # neither: CoOp (beta = 0)


def test_read_pairs_jsonl_and_csv(tmp_path, tiny):
    from PIL import Image

    for i, colour in enumerate(["red", "blue"]):
        Image.new("RGB", (40, 30), colour).save(tmp_path / f"{i}.png")
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps({"image": f"{i}.png", "caption": c})
                                                for i, c in enumerate(["a red square", "a blue square"])))  # fmt: skip
    (tmp_path / "p.csv").write_text("image,caption\n0.png,a red square\n1.png,a blue square\n")
    for name in ("p.jsonl", "p.csv"):
        pairs = read_pairs(str(tmp_path / name))
        assert pairs.captions == ["a red square", "a blue square"]
        x = pairs.batch([0, 1], 32)
        assert x.shape == (2, 3, 32, 32) and not torch.equal(x[0], x[1])
    f, _ = pair_features(*tiny, read_pairs(str(tmp_path / "p.csv")), "cpu")
    assert f.shape[0] == 2


def test_vit_b16_trainable_parameter_count(tiny):
    """No published count: stage 1 meta-learns ctx + beta, 2 x 4 x 512; stage 2 trains ctx, 4 x 512."""
    model, tok = tiny
    m = GRAMModel(model, tok, NAMES, GRAMConfig())
    width = model.token_embedding.embedding_dim  # 64 in the tiny CLIP, 512 in ViT-B/16
    assert m.ctx.numel() + m.regulator.numel() == 2 * 4 * width == 512
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 4 * width
    assert 2 * 4 * 512 == 4_096 and 4 * 512 == 2_048  # ViT-B/16 (text width 512)


def test_base_to_new_end_to_end(tmp_path):
    assert_base_new_hm(run_smoke("gram_digits", tmp_path))
    assert (tmp_path / "results.json").exists()
