"""MoCoOp (unofficial, from the paper / spec section 13): top-k router weights, gate targets and loss, the LASP
text-to-text loss in closed form, the routed-mixture logits, template-initialised experts, what trains, base-to-new,
the ViT-B/16 parameter count."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from avalanche.training.plugins import EvaluationPlugin
from ctta.strategies.mocoop import (
    MoCoOpConfig,
    MoCoOpModel,
    gate_loss,
    gate_targets,
    mocoop_regularisers,
    parse_groups,
    text_to_text_loss,
    top_k_weights,
)

from ctta.clip_prompting.text import encode_words
from ctta.data.digits import DIGIT_NAMES
from ctta.registry import STRATEGIES
from tests import _conformance_cases as cc
from tests.helpers import assert_base_new_hm, changed_by_training, run_smoke

ROOT = Path(__file__).resolve().parents[1]
NAMES = list(DIGIT_NAMES[:4])
GROUPS = ("a photo of a {}. | a photo of the {}.", "a blurry photo of a {}.", "a {}.")


def test_top_k_weights_closed_form():
    gate = torch.tensor([[1.0, 3.0, 2.0], [0.0, 1.0, 1.0]])
    w = top_k_weights(gate, 2)
    e = 1 / (1 + math.e)  # softmax of (a, a - 1): (1 - e, e)
    torch.testing.assert_close(w, torch.tensor([[0.0, 1 - e, e], [0.0, 0.5, 0.5]]))
    torch.testing.assert_close(top_k_weights(gate, 9), gate.softmax(-1))  # k >= K: plain softmax


def test_gate_targets_and_loss_closed_form():
    protos = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 2.0], [1.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])  # (K3,C2,E2)
    f = torch.tensor([[3.0, 0.0]])  # class 0: cosines to the three prototypes 1, 0, 1/sqrt(2)
    sims = torch.tensor([1.0, 0.0, 2**-0.5])
    want = (sims + torch.tensor([10.0, 0.0, 10.0])).softmax(-1)
    t = gate_targets(f, protos, torch.tensor([0]), k=2, bonus=10.0)
    torch.testing.assert_close(t, want[None])
    logits = torch.tensor([[0.5, -1.0, 2.0]])
    torch.testing.assert_close(gate_loss(logits, t), -(want * logits[0].log_softmax(-1)).sum())


def test_text_to_text_loss_closed_form():
    g = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])  # (K1, C2, E2)
    t = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])
    c = 2**-0.5
    row0 = torch.tensor([1.0, 0.0]) * 3.0  # scale 3: cos(g_0, t_0) = 1, cos(g_0, t_1) = 0
    row1 = torch.tensor([c, c]) * 3.0
    want = (F.cross_entropy(row0[None], torch.tensor([0])) + F.cross_entropy(row1[None], torch.tensor([1]))) / 2
    torch.testing.assert_close(text_to_text_loss(g, t, 3.0), want)
    cfg = MoCoOpConfig(text_weight=2.0, gate_weight=0.5, groups=("a {}.",), top_k=1)
    feats = {"text": g, "gate": torch.tensor([[0.3]]), "image": torch.tensor([[1.0, 0.0]])}
    torch.testing.assert_close(mocoop_regularisers(feats, t, torch.tensor([0]), 3.0, cfg), 2.0 * want)  # 1 expert: 0


def test_groups_and_template_initialised_experts(tiny):
    model, tok = tiny
    assert parse_groups(GROUPS)[0] == ["a photo of a {}.", "a photo of the {}."]
    m = MoCoOpModel(model, tok, NAMES, MoCoOpConfig(groups=GROUPS), generator=torch.Generator().manual_seed(0))
    assert m.ctx.shape[:2] == (3, 4) and m.router.out_features == 3
    torch.testing.assert_close(m.ctx[0].detach(), encode_words(model, tok, "a photo of a"))
    torch.testing.assert_close(m.ctx[1].detach(), encode_words(model, tok, "blurry photo of a"))  # the last 4 of 5
    torch.testing.assert_close(m.ctx[2, 3:].detach(), encode_words(model, tok, "a"))  # front-padded
    assert float(m.ctx[2, :3].detach().std()) < 0.05
    with torch.no_grad():  # prototype of group 0: mean of its two templates' frozen features
        toks = [tok([t.format(n) for n in NAMES]) for t in parse_groups(GROUPS)[0]]
        want = torch.stack([model.encode_text(x) for x in toks]).mean(0)
        torch.testing.assert_close(m.prototypes()[0], want, atol=1e-5, rtol=1e-5)
    try:
        parse_groups(("no placeholder",))
        raise AssertionError("a template without {} was accepted")
    except ValueError:
        pass


def test_logits_are_the_routed_mixture(tiny):
    model, tok = tiny
    m = MoCoOpModel(model, tok, NAMES, MoCoOpConfig(groups=GROUPS, top_k=2)).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        f = F.normalize(model.encode_image(x), dim=-1)
        g = F.normalize(m.text(m.ctx.unsqueeze(1)), dim=-1)  # (K, C, E)
        w = top_k_weights(m.router(f), 2)
        assert ((w > 0).sum(-1) == 2).all()
        mixed = sum(w[:, k, None, None] * g[k][None] for k in range(3))  # (B, C, E)
        want = model.logit_scale.exp() * torch.einsum("be,bce->bc", f, F.normalize(mixed, dim=-1))
        torch.testing.assert_close(m(x), want, atol=1e-5, rtol=1e-5)


def test_only_contexts_and_router_train(tiny):
    model, tok = tiny
    train, test = cc.digits(40, 20)
    strategy = STRATEGIES.get("mocoop").builder(
        model=model, tokenizer=tok, classnames=list(DIGIT_NAMES), epochs=1, batch_size=8, prec="fp32",
        warmup_epochs=0, lr=0.05, groups=GROUPS, evaluator=EvaluationPlugin(loggers=[]),
    )  # fmt: skip
    trainable = sorted(n for n, p in strategy.model.named_parameters() if p.requires_grad)
    assert trainable == ["ctx", "router.bias", "router.weight"]
    changed = changed_by_training(strategy, cc.class_incremental(train, test).train_stream[0])
    assert changed == {"ctx", "router.bias", "router.weight"}


def test_base_to_new_end_to_end(tmp_path):
    assert_base_new_hm(run_smoke("mocoop_digits", tmp_path))
    assert (tmp_path / "results.json").exists()


def test_trainable_parameter_count_vitb16():
    """4 experts x 4 x 512 + router 512 x 4 + 4 (no published count)."""
    from ctta.backbones.clip import create_clip

    torch.manual_seed(0)
    model, _, tok = create_clip("ViT-B-16", "", quick_gelu=True)
    m = MoCoOpModel(model, tok, ["cat", "dog"], MoCoOpConfig())
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 10_244
