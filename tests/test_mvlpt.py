"""MVLPT (strategies/mvlpt.py): VPT initialisation and insertion, the UPT coupling (the reference's per-token quirk and
the token-mixing switch), per-task logit masking, the variants' trainable parameters, prompt averaging
(``init_from``), base-to-new and multitask runs end to end."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from avalanche.training.plugins import EvaluationPlugin
from ctta.scenarios.few_shot_multi import FewShotMultiConfig, build_few_shot_multi
from ctta.strategies.mvlpt import MVLPTConfig, MVLPTModel, UPTCoupling, encode_image_vpt, task_mask, vpt_init_bound

from ctta.data.digits import DIGIT_NAMES
from ctta.registry import STRATEGIES
from tests import _conformance_cases as cc
from tests.helpers import assert_base_new_hm

ROOT = Path(__file__).resolve().parents[1]
NAMES = list(DIGIT_NAMES[:4])


def _strategy(model, tok, names=DIGIT_NAMES, plugins=(), **kw):
    return STRATEGIES.get("mvlpt").builder(
        model=model, tokenizer=tok, classnames=list(names), epochs=1, batch_size=8, prec="fp32", warmup_epochs=0,
        lr=0.05, evaluator=EvaluationPlugin(loggers=[]), plugins=list(plugins), **kw,
    )  # fmt: skip


def test_vpt_init_bound_and_draws(tiny):
    assert vpt_init_bound(16, 768) == pytest.approx(math.sqrt(6 / (3 * 16 * 16 + 768)))
    model, tok = tiny
    m = MVLPTModel(model, tok, NAMES, MVLPTConfig(variant="vpt", n_ctx=3, init_seed=0))
    patch, w = model.visual.conv1.weight.shape[-1], model.visual.class_embedding.shape[-1]
    a = vpt_init_bound(patch, w)
    layers = len(model.visual.transformer.resblocks)
    assert m.vpt.shape == (3, w) and m.vpt_deep.shape == (layers - 1, 3, w)
    assert m.vpt.abs().max() <= a and m.vpt_deep.abs().max() <= a and m.vpt.abs().max() > a / 4
    assert m.ctx is None and m.coupling is None


def test_vpt_prompts_sit_after_cls_unnormalised_and_replace_tokens_at_deep_layers(tiny):
    model, _ = tiny
    visual, n = model.visual, 2
    w = visual.class_embedding.shape[-1]
    g = torch.Generator().manual_seed(0)
    shallow, deep = (
        torch.randn(n, w, generator=g),
        torch.randn(len(visual.transformer.resblocks) - 1, n, w, generator=g),
    )
    images = torch.randn(3, 3, 32, 32, generator=g)
    seen = []
    hooks = [b.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone())) for b in
             visual.transformer.resblocks]  # fmt: skip
    try:
        with torch.no_grad():
            out = encode_image_vpt(model, images, shallow, deep)
    finally:
        for h in hooks:
            h.remove()
    torch.testing.assert_close(seen[0][:, 1 : 1 + n], shallow.expand(3, -1, -1))  # after ln_pre: not normalised
    with torch.no_grad():  # the CLS and patch tokens are ln_pre(embeddings + positions), in their own order
        x = visual.conv1(images).flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_embedding.expand(3, 1, -1), x], dim=1) + visual.positional_embedding
        torch.testing.assert_close(seen[0][:, [0, *range(1 + n, seen[0].shape[1])]], visual.ln_pre(x))
    assert len(seen) == len(visual.transformer.resblocks)
    for i in range(1, len(seen)):
        torch.testing.assert_close(seen[i][:, 1 : 1 + n], deep[i - 1].expand(3, -1, -1))
    assert seen[0].shape[1] == 1 + n + (32 // visual.conv1.weight.shape[-1]) ** 2
    assert out.shape == (3, model.text_projection.shape[1])


def _one_token_block(block, x):
    """Closed form of a pre-LN block on a length-1 sequence: softmax over one key is 1, so attention = out(v(ln1 x))."""
    attn = block.attn
    d = x.shape[-1]
    v = F.linear(block.ln_1(x), attn.in_proj_weight[2 * d :], attn.in_proj_bias[2 * d :])
    x = x + F.linear(v, attn.out_proj.weight, attn.out_proj.bias)
    return x + block.mlp(block.ln_2(x))


def test_upt_coupling_reference_quirk_is_per_token_closed_form():
    torch.manual_seed(0)
    c = UPTCoupling(6, 10, dim=8, generator=torch.Generator().manual_seed(1))
    ctx, vpt = torch.randn(3, 6), torch.randn(2, 2, 10)  # n = 3 text tokens; L = 2 layers x m = 2 visual tokens
    with torch.no_grad():
        t, v = c(ctx, vpt)
        z = torch.cat([c.text_pre(ctx), c.vision_pre(vpt.reshape(4, 10))])
        z = _one_token_block(c.mixer.module.resblocks[0], z)
        torch.testing.assert_close(t, c.text_post(z[:3]))
        torch.testing.assert_close(v, c.vision_post(z[3:]).reshape(2, 2, 10))
        t2, _ = c(ctx, vpt + 1)  # no token sees another: changing the visual prompts leaves the text ones alone
        torch.testing.assert_close(t2, t)
        c.token_mixing = True  # the switch: the prompt tokens attend to each other
        t3, _ = c(ctx, vpt)
        t4, _ = c(ctx, vpt + 1)
    assert not torch.allclose(t3, t4)
    maps = (6 * 8 + 8) + (8 * 6 + 6) + (10 * 8 + 8) + (8 * 10 + 10)  # text / vision pre and post maps
    block = (3 * 64 + 24) + (64 + 8) + 2 * 2 * 8 + (8 * 32 + 32) + (32 * 8 + 8)  # in/out proj, 2 LNs, MLP 8-32-8
    assert sum(p.numel() for p in c.parameters()) == maps + block


def test_upt_coupling_identity_where_widths_match_and_stays_fp32():
    c = UPTCoupling(8, 8, dim=8)
    assert all(isinstance(m, torch.nn.Identity) for m in (c.text_pre, c.text_post, c.vision_pre, c.vision_post))
    c.half()
    assert all(p.dtype == torch.float32 for p in c.mixer.parameters())


def test_task_mask_closed_form():
    task_of = torch.tensor([0, 0, 1, 1, 1])
    want = torch.tensor([[1.0, 1, 0, 0, 0], [0, 0, 1, 1, 1], [1, 1, 0, 0, 0]])
    torch.testing.assert_close(task_mask(task_of, torch.tensor([1, 3, 0])), want)


@pytest.mark.parametrize(
    "variant, want",
    [("upt", {"ctx", "vpt", "vpt_deep"}), ("vpt", {"vpt", "vpt_deep"}), ("coop", {"ctx"})],
)
def test_only_the_declared_prompts_train(tiny, variant, want):
    model, tok = tiny
    train, test = cc.digits(40, 20)
    strategy = _strategy(model, tok, variant=variant, n_ctx=2)
    trainable = {n for n, p in strategy.model.named_parameters() if p.requires_grad}
    own = {n for n in trainable if not n.startswith("coupling.")}
    assert own == want and all(n.startswith(tuple(want) + ("coupling.",)) for n in trainable)
    assert any(n.startswith("coupling.mixer.") for n in trainable) == (variant == "upt")
    frozen = {k: v.clone() for k, v in strategy.model.named_parameters()}
    strategy.train(cc.class_incremental(train, test).train_stream[0])
    changed = {k for k, v in strategy.model.named_parameters() if not torch.equal(v, frozen[k])}
    assert changed and changed <= trainable and want <= changed


def test_vpt_variant_text_is_the_hard_prompt_and_coop_variant_puts_the_class_in_the_middle(tiny):
    model, tok = tiny
    m = MVLPTModel(model, tok, NAMES, MVLPTConfig(variant="vpt", n_ctx=2))
    with torch.no_grad():
        want = model.encode_text(tok([f"a photo of a {n}." for n in NAMES]))
        torch.testing.assert_close(m.text(None), want, atol=1e-5, rtol=1e-5)
    coop = MVLPTModel(model, tok, NAMES, MVLPTConfig(variant="coop", n_ctx=4))
    assert coop.text.position == "middle" and coop.ctx.shape == (4, model.token_embedding.weight.shape[1])


def test_init_from_averages_saved_prompts(tiny, tmp_path):
    model, tok = tiny
    paths = []
    for seed in (0, 1):
        m = MVLPTModel(model, tok, NAMES, MVLPTConfig(n_ctx=2, init_seed=seed))
        state = {k: v.detach().clone() for k, v in m.named_parameters() if v.requires_grad}
        torch.save({"state_dict": state}, tmp_path / f"s{seed}.pt")
        paths.append(state)
    cfg = MVLPTConfig(n_ctx=2, init_from=(str(tmp_path / "s0.pt"), str(tmp_path / "s1.pt")))
    avg = STRATEGIES.get("mvlpt").builder.build_prompted(model, tok, NAMES, cfg)
    for k, v in avg.named_parameters():
        if v.requires_grad:
            torch.testing.assert_close(v, (paths[0][k] + paths[1][k]) / 2)


def test_base_to_new_end_to_end(tmp_path):
    from ctta.runner.config import load_config
    from ctta.runner.run import run

    text = (ROOT / "configs" / "smoke" / "mvlpt_digits.yaml").read_text()
    text = text.replace(
        "{name: few_shot_multi, datasets: [digits/0/2, digits/1/2], shots: 4, img_size: 32, max_test: 50}",
        "{name: few_shot, dataset: digits, shots: 4, img_size: 32, max_test: 50}",
    )
    (tmp_path / "b2n.yaml").write_text(text)
    cfg = load_config(tmp_path / "b2n.yaml", [f"log.out_dir={tmp_path / 'run'}", "log.plot=false", "device=cpu",
                                               f"strategy.prompts_out={tmp_path / 'prompts.pt'}"])  # fmt: skip
    assert_base_new_hm(run(cfg, verbose=False)["summary"])
    saved = torch.load(tmp_path / "prompts.pt", weights_only=True)["state_dict"]
    assert {"ctx", "vpt", "vpt_deep"} <= set(saved)


class _Logits:
    def __init__(self):
        self.out, self.y = [], []

    def __getattr__(self, name):
        if name.startswith(("before_", "after_")):
            return lambda strategy, **kw: None
        raise AttributeError(name)

    def after_eval_iteration(self, strategy, **kw):
        self.out.append(strategy.mb_output.detach().clone())
        self.y.append(strategy.mb_y.clone())


def test_multitask_label_pertask_zeroes_the_other_datasets_logits(tiny):
    model, tok = tiny
    bench = build_few_shot_multi(FewShotMultiConfig(datasets=("digits/0/2", "digits/1/2"), shots=2, img_size=32,
                                                    max_test=10))  # fmt: skip
    keep = _Logits()
    strategy = _strategy(model, tok, names=bench.info.classnames, plugins=[keep], n_ctx=2, label_pertask=True)
    strategy.train(bench.train_stream[0])
    strategy.eval(bench.streams["test_digits_1_2"])
    out, y = torch.cat(keep.out), torch.cat(keep.y)
    assert (y >= 5).all() and out.shape[1] == 10
    assert (out[:, :5] == 0).all() and (out[:, 5:] != 0).all()
