"""HiCroPL: closed forms of the proxy pooling, the knowledge mapper, the fusion and the loss; the official quirks
(the ``.data.copy_`` rewrite that leaves mappers, pooling nets and proxies untrained, the rewrite at every evaluation
forward, best-validation selection never on a test set) and their switches; initialisation; Adam; TPT hand-over;
class-incremental stream; base-to-new end to end."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from avalanche.training.plugins import EvaluationPlugin
from ctta.strategies.hicropl import (
    AttentionPooling,
    CrossPromptAttention,
    HiCroPL,
    HiCroPLConfig,
    HiCroPLModel,
    hicropl_loss,
)

from ctta.clip_prompting import encode_image
from ctta.clip_prompting.descriptions import load_descriptions
from ctta.data.digits import DIGIT_NAMES
from ctta.registry import STRATEGIES
from tests import _conformance_cases as cc
from tests.helpers import SMOKE, run_contract

NAMES = list(DIGIT_NAMES[:4])
TINY = dict(n_ctx=2, depth=2, cross_layer=1, descriptions=("builtin:digits",))


def _model(tiny, **kw) -> HiCroPLModel:
    model, tok = tiny
    cfg = HiCroPLConfig(**{**TINY, **kw})
    g = torch.Generator().manual_seed(0)
    return HiCroPLModel(model, tok, NAMES, cfg, load_descriptions("builtin:digits"), generator=g)


def _ln(x, mod):
    return F.layer_norm(x, x.shape[-1:], mod.weight, mod.bias)


def _one_key_attention(attn, v):
    """MHA with a single key: every query gets ``out_proj(W_v v + b_v)`` (softmax over one key is 1)."""
    d = attn.embed_dim
    value = v @ attn.in_proj_weight[2 * d :].t() + attn.in_proj_bias[2 * d :]
    return value @ attn.out_proj.weight.t() + attn.out_proj.bias


def test_attention_pooling_closed_form():
    torch.manual_seed(0)
    pool = AttentionPooling(16, 8)
    q, s = torch.randn(1, 16), torch.randn(1, 16)
    expected = _ln(q + _one_key_attention(pool.attn, _ln(s, pool.ln_1)), pool.ln_2)
    torch.testing.assert_close(pool(q, s), expected)


def test_cross_prompt_attention_closed_form():
    torch.manual_seed(0)
    net = CrossPromptAttention(16, 8, 8)
    q, p = torch.randn(3, 16), torch.randn(1, 8)
    qp = q @ net.linear_q.weight.t() + net.linear_q.bias
    vp = _ln(p @ net.linear_v.weight.t() + net.linear_v.bias, net.ln_1)
    qp = qp + _one_key_attention(net.attn, vp)
    h = _ln(qp, net.ln_2) @ net.ffn.c_fc.weight.t() + net.ffn.c_fc.bias
    expected = qp + (h * torch.sigmoid(1.702 * h)) @ net.ffn.c_proj.weight.t() + net.ffn.c_proj.bias
    torch.testing.assert_close(net(q, p), expected)


def test_loss_closed_form():
    logits, y = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    g, g_llm = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    f, f_zs = torch.tensor([[3.0, 4.0]]), torch.tensor([[4.0, 3.0]])
    cos_t, cos_i = (2**-0.5 + 1.0) / 2, 24 / 25
    expected = F.cross_entropy(logits, y) + 12.0 * ((1 - cos_t) + (1 - cos_i))
    torch.testing.assert_close(hicropl_loss(logits, y, g, g_llm, f, f_zs, 12.0), expected)


def test_fusion_closed_form_functional(tiny):
    m = _model(tiny, mapping="functional").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        texts, visuals = m.prompts()
        f_zs = F.normalize(m.clip.encode_image(x), dim=-1)
        f = F.normalize(F.normalize(encode_image(m.clip, x, visuals[0], visuals[1:]), dim=-1) + f_zs, dim=-1)
        g_llm = m.descriptions.features.half().float()
        g = F.normalize(F.normalize(m.text(texts[0], texts[1:]), dim=-1) + g_llm, dim=-1)
        torch.testing.assert_close(m(x), m.logit_scale * f @ g.t(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(m(x), m(x))  # functional: evaluation is a pure function of the weights
    mean = torch.stack([F.normalize(m.clip.encode_text(m.tokenizer(d)), dim=-1).mean(0) for d in _descs()])
    torch.testing.assert_close(m.descriptions.features, F.normalize(mean, dim=-1), atol=1e-5, rtol=1e-5)


def _descs():
    bank = load_descriptions("builtin:digits")
    return [bank[n] for n in NAMES]


def test_description_teacher_stays_fp32_under_half(tiny):
    model, tok = tiny
    cfg = HiCroPLConfig(**TINY)
    m = HiCroPLModel(copy.deepcopy(model), tok, NAMES, cfg, load_descriptions("builtin:digits"))
    before = m.descriptions.features.clone()
    m.half()  # the template's prec: fp16 on CUDA; the distillation target stays the fp32 teacher's
    assert m.descriptions.features.dtype == torch.float32 and torch.equal(m.descriptions.features, before)
    assert m.vpt.dtype == torch.float16


def test_init_shared_values_separate_parameters(tiny):
    m = _model(tiny)
    assert torch.equal(m.vpt, m.deep_vision[0]) and m.vpt.data_ptr() != m.deep_vision[0].data_ptr()
    assert m.vpt.std() < 0.05 and m.ctx.shape == (2, 64) and m.text.layout == [2, "of a"]
    assert len(m.pool_text) == 1 and len(m.pool_visual) == 1 and len(m.text_proxy) == 1
    n16 = HiCroPLConfig(n_ctx=16)
    assert n16.ctx_init == "a photo of a"  # ignored for n_ctx > 4: random context with "X" placeholders
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    assert len(names) == 11 * 2 + 36  # 11J + 36 tensors, as the reference's trainables


def test_official_rewrite_no_gradient_to_mappers(tiny):
    m = _model(tiny).train()
    texts, visuals = m.raw_prompts()
    with torch.no_grad():
        new_v, new_t = m.mapped(texts, visuals)
    untouched = [m.ctx.detach().clone(), m.deep_vision[0].detach().clone()]  # T_0 and V_k (k = 1) never rewritten
    out = m(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(m.vpt.detach(), new_v[0])  # V_0 <- text->vision map
    torch.testing.assert_close(m.deep_text[0].detach(), new_t[0])  # T_1 <- vision->text map
    assert torch.equal(m.ctx, untouched[0]) and torch.equal(m.deep_vision[0], untouched[1])
    loss = hicropl_loss(
        out, torch.tensor([0, 1]), *(m.features[k] for k in ("text", "text_llm", "image", "image_zs")), 12.0
    )
    loss.backward()
    with_grad = {n for n, p in m.named_parameters() if p.grad is not None}
    assert with_grad == {"ctx", "deep_text.0", "vpt", "deep_vision.0"}  # only the 2J prompts


def test_official_every_eval_forward_rewrites_and_functional_switch(tiny):
    m = _model(tiny).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        first, v_first = m(x), m.vpt.clone()
        second = m(x)
    assert not torch.equal(m.vpt, v_first) and not torch.allclose(first, second)  # test logits depend on history
    f = _model(tiny, mapping="functional").train()
    out = f(torch.randn(2, 3, 32, 32))
    hicropl_loss(
        out, torch.tensor([0, 1]), *(f.features[k] for k in ("text", "text_llm", "image", "image_zs")), 12.0
    ).backward()
    for name in ("text2visual.linear_q.weight", "visual2text.ffn.c_fc.weight", "pool_text.0.attn.in_proj_weight",
                 "text_proxy.0"):  # fmt: skip
        assert dict(f.named_parameters())[name].grad is not None, name


def test_adam_and_untrained_mappers_stay_fixed(tiny):
    model, tok = tiny
    train, test = cc.digits(16, 16)
    bench = cc.class_incremental(train, test)
    strategy = STRATEGIES.get("hicropl").builder(
        model=model, tokenizer=tok, classnames=list(DIGIT_NAMES), **TINY, epochs=1, batch_size=8, prec="fp32",
        evaluator=EvaluationPlugin(loggers=[]),
    )  # fmt: skip
    before = {n: p.detach().clone() for n, p in strategy.model.named_parameters()}
    strategy.train(bench.train_stream[0])
    assert isinstance(strategy.optimizer, torch.optim.Adam) and strategy.optimizer.defaults["eps"] == 1e-3
    changed = {n for n, p in strategy.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"ctx", "deep_text.0", "vpt", "deep_vision.0"}
    assert strategy.model.text.n_classes == 5 and strategy.seen == [0, 1, 2, 3, 4]  # class-incremental head
    assert strategy._valid_dataset() is None  # no validation stream: last epoch, never a test set
    strategy.train(bench.train_stream[1])
    assert strategy.model.text.n_classes == 10


def test_best_validation_selection_ties_to_later_epoch(tiny):
    m = _model(tiny)
    accs = iter([0.5, 0.7, 0.7, 0.3])
    fake = SimpleNamespace(
        model=m, _best=None, _valid_dataset=lambda: "valid", validation_accuracy=lambda ds: next(accs)
    )  # fmt: skip
    snapshots = []
    for _ in range(4):
        with torch.no_grad():
            m.ctx.add_(1.0)
        snapshots.append(m.ctx.detach().clone())
        HiCroPL.epoch_end(fake)
    HiCroPL.restore_best(fake)
    torch.testing.assert_close(m.ctx.detach(), snapshots[2])
    assert fake.best_validation_accuracy == 0.7
    last = SimpleNamespace(cfg=HiCroPLConfig(selection="last"), seen=None, experience=None)
    assert HiCroPL._valid_dataset(last) is None


def test_missing_descriptions_error(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="strategy.descriptions"):
        HiCroPL.build_prompted(model, tok, NAMES, HiCroPLConfig(n_ctx=2, depth=2, cross_layer=1))


def test_tpt_tunes_a_trained_hicropl_model(tiny):
    from ctta.strategies.tpt import PromptTuner, TPTConfig

    m = _model(tiny, mapping="functional")
    views = torch.randn(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tuner = PromptTuner.from_prompted(m, TPTConfig(selection_p=0.25))
    with torch.no_grad():
        before = m(views[:, 0])
    tuned = tuner.predict_many(views)
    assert tuner.prompted is m and tuned.shape == before.shape and not torch.allclose(tuned, before)


def test_base_to_new_end_to_end_with_validation_selection(tmp_path):
    run = run_contract(SMOKE / "hicropl_digits.yaml", tmp_path / "run")
    summary = run.results["summary"]
    assert {"base_acc", "new_acc", "hm"} <= set(summary)
    b, n = summary["base_acc"], summary["new_acc"]
    assert summary["hm"] == pytest.approx(2 * b * n / (b + n) if b + n else 0.0)
    assert 0.0 <= run.ctx.strategy.best_validation_accuracy <= 1.0  # the valid stream was scored and selected on
