"""TPT: closed forms (losses, selection, AdamW step, loss scaler), fast path == straightforward path, episodic
reset, batching, the loss-scaler skip semantics, views, and the Avalanche strategy on a tiny stream."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ctta.strategies.tpt import TPT, PromptTuner, TPTConfig

from ctta.clip_prompting.episode_optim import BatchedAdamW, LossScaler
from ctta.data import tta_views
from ctta.losses import avg_entropy, confident_indices, cosine_keep_indices, entropy, gather_views, n_confident

NAMES = ["dog", "cat", "great white shark", "golden retriever", "a red sports car", "tree"]


@pytest.fixture(scope="module")
def views():
    return torch.randn(3, 8, 3, 32, 32, generator=torch.Generator().manual_seed(3))


# ---------------------------------------------------------------------------------------------- closed forms
def test_avg_entropy_closed_form():
    z = torch.randn(2, 5, 7, dtype=torch.float64)
    pbar = z.softmax(-1).mean(-2)
    assert torch.allclose(avg_entropy(z), -(pbar * pbar.log()).sum(-1))
    assert torch.allclose(entropy(z), -(z.softmax(-1) * z.log_softmax(-1)).sum(-1))
    z = torch.tensor([[0.0, float("-inf"), 1.0], [2.0, float("-inf"), 0.0]])  # a class with probability 0
    assert torch.isfinite(avg_entropy(z))
    with pytest.raises(ValueError, match="at least one view"):
        avg_entropy(torch.zeros(0, 3))


def test_confident_selection_and_cosine_filtration():
    assert n_confident(64, 0.1) == 6 and n_confident(102, 0.3) == 30 and n_confident(3, 0.1) == 1
    sharp = torch.tensor([[10.0, 0, 0], [0, 0, 0], [0, 5.0, 0], [0, 0, 20.0], [1.0, 0, 0]])  # entropies: ranks
    assert confident_indices(sharp, 0.4).tolist() == [3, 0]
    assert confident_indices(torch.zeros(4, 3), 0.5).tolist() == [0, 1]  # ties keep view order (stable)
    x = torch.tensor([[1.0, 0], [0.9, 0.1], [-1, 0], [0, 1], [1, 0.01]])
    assert cosine_keep_indices(x, 0.5).tolist() == [0, 4, 1]
    assert cosine_keep_indices(torch.randn(128, 9), 0.8).shape == (1 + int(127 * 0.8),) == (102,)
    assert gather_views(torch.arange(10.0).view(5, 2), torch.tensor([3, 0])).tolist() == [[6, 7], [0, 1]]


def test_fresh_adamw_step_is_the_sign_step_and_matches_torch():
    torch.manual_seed(0)
    ctx0 = torch.randn(3, 4, 5, dtype=torch.float64)
    g = torch.randn(3, 4, 5, dtype=torch.float64)
    ctx = ctx0.clone()
    BatchedAdamW(ctx, lr=5e-3, weight_decay=0.01).step(g)
    assert torch.allclose(ctx, ctx0 * (1 - 5e-3 * 0.01) - 5e-3 * g / (g.abs() + 1e-8), atol=1e-12)
    p32 = ctx0.float().clone()
    ref = torch.nn.Parameter(ctx0.float().clone())
    opt, mine = torch.optim.AdamW([ref], lr=5e-3), BatchedAdamW(p32, lr=5e-3)
    for k in range(4):
        grad = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(k))
        ref.grad = grad.clone()
        opt.step()
        mine.step(grad)
    assert torch.allclose(p32, ref.detach(), atol=1e-6, rtol=0)
    before = p32.clone()
    mine.step(torch.ones_like(p32), active=[True, False, True])
    assert torch.equal(p32[1], before[1]) and not torch.equal(p32[0], before[0]) and mine.steps == [5, 4, 5]


def test_loss_scaler_follows_torch_gradscaler():
    param = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([param], lr=0.1)
    torch_scaler = torch.amp.GradScaler("cpu", init_scale=8.0, growth_interval=3)
    mine = LossScaler(8.0, "shared", growth_interval=3)
    assert mine.forecast(4) == [8.0, 8.0, 8.0, 16.0]
    for bad in [False, True, False, False, False, False, True, False]:
        loss = (param * torch.tensor([float("inf") if bad else 1.0, 0.0])).sum()
        opt.zero_grad()
        torch_scaler.scale(loss).backward()
        torch_scaler.step(opt)
        torch_scaler.update()
        mine.update(bad)
        assert mine.scale == torch_scaler.get_scale()


# ---------------------------------------------------------------------------------------------- fast == slow
def _run(tiny, views, **kw):
    model, tok = tiny
    tuner = PromptTuner(model, tok, NAMES, TPTConfig(**kw))
    out = tuner.predict_many(views)
    return tuner, out


@pytest.fixture(scope="module")
def straightforward(tiny, views):
    """The reference computation (fast=False) for 1 and 4 steps, computed once."""
    return {steps: _run(tiny, views, fast=False, tta_steps=steps) for steps in (1, 4)}


# each exact switch alone (1 step), the ones that matter across steps (4 steps); 'default' = all together
CASES = [
    (1, dict()),
    (1, dict(text_truncation="longest")),
    (1, dict(text_truncation="none", episode_batch=2)),
    (1, dict(cache_view_features=False)),
    (1, dict(step1_graph=False)),
    (1, dict(shared_prefix=False, episode_batch=3)),
    (1, dict(text_grad="jacobian", episode_batch=3)),
    (4, dict()),
    (4, dict(step1_graph=False, cache_view_features=False)),
    (4, dict(episode_batch=3, n_buckets=2)),
]


@pytest.mark.parametrize(
    "steps,switches",
    CASES,
    ids=[f"{s}step-" + (",".join(f"{k}={v}" for k, v in d.items()) or "default") for s, d in CASES],
)
def test_fast_path_equals_straightforward(tiny, views, straightforward, steps, switches):
    slow, ref = straightforward[steps]
    fast, out = _run(tiny, views, tta_steps=steps, **switches)
    assert torch.equal(out.argmax(-1), ref.argmax(-1))
    assert torch.allclose(out, ref, atol=1e-3, rtol=0)
    assert torch.equal(fast.last_selected, slow.last_selected)
    assert torch.allclose(fast.last_ctx, slow.last_ctx, atol=1e-4 * steps, rtol=0)
    assert not torch.allclose(fast.last_ctx[0], fast.text.ctx0)  # the context did move
    assert torch.equal(fast.text.ctx.detach(), fast.text.ctx0)  # and was reset


def test_predict_equals_predict_many_and_order_invariance(tiny, views):
    model, tok = tiny
    tuner = PromptTuner(model, tok, NAMES, TPTConfig(episode_batch=3))
    many = tuner.predict_many(views)
    single = torch.stack([tuner.predict(v) for v in views])
    assert torch.allclose(many, single, atol=1e-5, rtol=0)
    perm = torch.tensor([2, 0, 1])
    assert torch.allclose(tuner.predict_many(views[perm]), many[perm], atol=1e-5, rtol=0)


def test_reset_restores_initial_context_exactly(tiny, views):
    model, tok = tiny
    for fast in (False, True):
        tuner = PromptTuner(model, tok, NAMES, TPTConfig(fast=fast, tta_steps=2))
        ctx0 = tuner.text.ctx.detach().clone()
        tuner.predict_many(views)
        assert torch.equal(tuner.text.ctx.detach(), ctx0) and torch.equal(tuner.text.ctx0, ctx0)
        cont = PromptTuner(model, tok, NAMES, TPTConfig(fast=fast, episodic=False))
        cont.predict_many(views)
        assert not torch.equal(cont.text.ctx.detach(), ctx0)  # continual: the context keeps adapting
        cont.reset()
        assert torch.equal(cont.text.ctx.detach(), ctx0)
    assert all(not p.requires_grad for p in model.parameters())


def test_continual_fast_equals_straightforward(tiny, views):
    slow, ref = _run(tiny, views, fast=False, episodic=False, tta_steps=2)
    fast, out = _run(tiny, views, episodic=False, tta_steps=2, episode_batch=3)
    assert torch.equal(out.argmax(-1), ref.argmax(-1)) and torch.allclose(out, ref, atol=1e-3, rtol=0)
    assert torch.allclose(fast.text.ctx, slow.text.ctx, atol=2e-4 * 3, rtol=0)


def test_overflow_skips_only_that_sample_batched_like_unbatched(tiny, views):
    """Scale 2^127 overflows fp32 gradients: a skipped sample keeps ctx0 (zero-shot prediction); the scaler halves."""
    model, tok = tiny
    zero_shot = PromptTuner(model, tok, NAMES, TPTConfig(lr=0.0, weight_decay=0.0)).predict_many(views)
    runs = []
    for fast, batch in ((False, 1), (True, 1), (True, 3)):
        tuner = PromptTuner(
            model,
            tok,
            NAMES,
            TPTConfig(fast=fast, grad_scaler="shared", init_scale=2.0**127, tta_steps=2, episode_batch=batch),
        )
        runs.append((tuner.predict_many(views), tuner.scaler.state_dict(), tuner.last_ctx))
    (ref, state, ctx), others = runs[0], runs[1:]
    assert state["scale"] < 2.0**127  # at least one overflow happened
    ctx0 = PromptTuner(model, tok, NAMES, TPTConfig()).text.ctx0
    skipped = [i for i in range(len(views)) if torch.equal(ctx[i], ctx0)]
    assert all(torch.allclose(ref[i], zero_shot[i], atol=1e-5) for i in skipped)
    for out, st, c in others:
        assert st == state and torch.equal(out.argmax(-1), ref.argmax(-1))
        assert torch.allclose(out, ref, atol=1e-3, rtol=0) and torch.allclose(c, ctx, atol=2e-4, rtol=0)


def test_custom_view_filter_is_used(tiny, views):
    model, tok = tiny
    calls = []

    def first_two(logits, feats):
        calls.append((tuple(logits.shape), tuple(feats.shape)))
        return torch.tensor([[0, 1]] * len(logits))

    tuner = PromptTuner(model, tok, NAMES, TPTConfig(episode_batch=3), select_fn=first_two)
    tuner.predict_many(views)
    assert tuner.last_selected.tolist() == [[0, 1]] * 3
    assert calls[0][0] == (3, 8, len(NAMES)) and calls[0][1][:2] == (3, 8)


# ---------------------------------------------------------------------------------------------- views
def test_views_shapes_determinism_and_augmix_bounds():
    img = tta_views._to_pil(torch.rand(3, 40, 50, generator=torch.Generator().manual_seed(0)))
    gen = tta_views.TPTViews(n_views=6, resolution=32, augmix=True)
    a = gen(img, np.random.default_rng([1, 7]))
    b = gen(img, np.random.default_rng([1, 7]))
    c = gen(img, np.random.default_rng([1, 8]))
    assert a.shape == (6, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a[1:], c[1:])
    assert torch.equal(a[0], c[0]) and torch.equal(a[0], gen.base(img))  # view 0: deterministic centre crop
    rng = np.random.default_rng(0)
    levels = [tta_views._level(rng, 1.0) for _ in range(2000)]
    assert max(tta_views._int_param(v, 30) for v in levels) <= 2  # rotate <= 2 degrees
    assert min(256 - tta_views._int_param(v, 256) for v in levels) >= 231  # solarize threshold
    assert {4 - tta_views._int_param(v, 4) for v in levels} == {4}  # posterize keeps 4 bits
    assert max(tta_views._float_param(v, 0.3) for v in levels) <= 0.03 + 1e-12
    assert max(tta_views._int_param(v, 224 / 3) for v in levels) <= 7
    top, left, h, w = tta_views.random_resized_crop_params(rng, 50, 40)
    assert 0 <= top <= 40 - h and 0 <= left <= 50 - w
    assert tta_views.make_views([img, img], n_views=3, resolution=32).shape == (2, 3, 3, 32, 32)


# ---------------------------------------------------------------------------------------------- strategy
def test_strategy_on_a_tiny_stream(tiny):
    from ctta.scenarios.test_time import TestTimeConfig, build_test_time

    from ctta.backbones.clip import CLIPBackbone
    from ctta.evaluation import make_evaluator

    model, tok = tiny
    bench = build_test_time(TestTimeConfig(dataset="digits", n_views=6, resolution=32, max_samples=6), seed=0)
    backbone = CLIPBackbone(model, tok, None, "ctta-tiny-clip", "")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for episodic in (True, False):
        cfg = TPTConfig(selection_p=0.34, episode_batch=3, episodic=episodic, log_selected=True)
        strat = TPT.from_config(
            cfg,
            backbone=backbone,
            benchmark=bench,
            device="cpu",
            evaluator=make_evaluator(extra_metrics=TPT.extra_metrics(cfg)),
        )
        ctx0 = strat.tuner.text.ctx0.clone()
        metrics = strat.eval(bench.test_stream)
        acc = metrics["Top1_Acc_Stream/eval_phase/test_stream"]
        assert 0.0 <= acc <= 1.0 and metrics["Top5_Acc_Stream/eval_phase/test_stream"] >= acc
        assert len(strat.selected) == 6 and math.isfinite(float(strat.loss))
        assert torch.equal(strat.tuner.text.ctx.detach(), ctx0) == episodic
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="views"):
        strat.adapt_and_predict(torch.zeros(2, 3, 32, 32))


def test_config_errors():
    with pytest.raises(ValueError, match="text_grad"):
        TPTConfig(text_grad="jacobian", tta_steps=4)
    with pytest.raises(ValueError, match="amp"):
        TPTConfig(amp="fp8")
    with pytest.raises(ValueError, match="init"):
        TPTConfig(init="cocoop")


def test_zero_steps_is_zero_shot_clip(tiny, views):
    model, tok = tiny
    with torch.no_grad():
        f = model.encode_image(views[:, 0], normalize=True)
        t = model.encode_text(tok([f"a photo of a {n}." for n in NAMES]), normalize=True)
        ref = model.logit_scale.exp() * f @ t.T
    for fast in (False, True):
        out = PromptTuner(model, tok, NAMES, TPTConfig(tta_steps=0, fast=fast, episode_batch=3)).predict_many(views)
        assert torch.allclose(out, ref, atol=1e-5, rtol=0)
