"""Tests of strategies/mvp.py: parameter counts, closed-form losses, selection, online loop, replay, caching."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from ctta.scenarios.si_blurry import si_blurry_benchmark
from ctta.strategies.mvp import (
    MVP,
    MVPConfig,
    MVPModel,
    MVPParameters,
    afs_logits,
    cvpt_loss,
    gsf_ignore,
    gsf_loss,
    mvp_loss,
)

from ctta.backbones.vit import PromptedViT, create_vit
from ctta.data.digits import TensorImageDataset
from ctta.data.replay import ReservoirMemory
from ctta.evaluation import anytime_metric
from ctta.prompts.pool import PromptPool
from tests.helpers import TINY_VIT

TINY = {k: v for k, v in TINY_VIT.items() if k not in ("model", "pretrained")}


@pytest.fixture(scope="module")
def backbone() -> PromptedViT:
    torch.manual_seed(0)
    return PromptedViT(create_vit("vit_tiny_patch16_224", pretrained=False, **TINY))


def _model(backbone, num_classes=10, **cfg) -> MVPModel:
    torch.manual_seed(1)
    return MVPModel(backbone, num_classes, MVPConfig(**cfg))


@pytest.mark.parametrize("n_classes, expected", [(100, 554_060), (200, 631_960)])
def test_parameter_counts_vit_b(n_classes, expected):
    params = MVPParameters(768, n_classes, MVPConfig())
    assert sum(p.numel() for p in params.parameters() if p.requires_grad) == expected
    assert params.pool.keys.shape == (10, 768) and params.pool.prompts.shape == (10, 60, 768)
    assert params.g_prompts.shape == (1, 10, 768) and params.mask.shape == (10, n_classes)
    assert params.pool.count.shape == (10,) and not params.pool.count.is_floating_point()


def test_mu_init_and_shapes(backbone):
    model = _model(backbone)
    out = model(torch.randn(4, 3, 32, 32))
    assert out.feats.shape == (4, 48) and out.logits.shape == (4, 10)
    assert torch.allclose(out.mu, torch.full((4, 10), 2 * torch.sigmoid(torch.tensor(-1.0)).item()))
    assert torch.all(model.mvp.pool.count == 0)  # no update_count on a plain forward


def _reference_features(model: MVPModel, x: torch.Tensor):
    """Straightforward MVP forward: separate query pass, prompts appended and truncated after each block."""
    vit, cfg, pool = model.backbone.vit, model.cfg, model.mvp.pool
    t = vit._pos_embed(vit.patch_embed(x))
    q = t
    with torch.no_grad():
        for blk in vit.blocks[: len(vit.blocks) - 1]:
            q = blk(q)
    q = q[:, 0]
    d = 1 - F.cosine_similarity(q[:, None], pool.keys[None], dim=-1)
    p_star = (d * (pool.count + 1)).argmin(1)
    g = model.mvp.g_prompts.expand(len(x), -1, -1)
    e = pool.prompts[p_star]
    n = t.shape[1]
    for i, blk in enumerate(vit.blocks):
        extra = [g[:, cfg.g_length * cfg.g_layers.index(i) :][:, : cfg.g_length]] if i in cfg.g_layers else []
        if i in cfg.e_layers:
            j = cfg.e_layers.index(i)
            extra.append(e[:, j * cfg.e_length : (j + 1) * cfg.e_length])
        t = blk(torch.cat([t, *extra], 1))[:, :n] if extra else blk(t)
    return vit.norm(t)[:, 0], p_star


def test_forward_equals_straightforward_reference(backbone):
    model = _model(backbone)
    model.mvp.pool.count.copy_(torch.arange(10))
    x = torch.randn(5, 3, 32, 32)
    out = model(x)
    ref_f, ref_idx = _reference_features(model, x)
    assert torch.equal(out.selection.top1, ref_idx)
    assert (out.feats - ref_f).abs().max() <= 1e-5


def test_selection_identical_in_train_and_eval_and_count_penalty(backbone):
    model = _model(backbone)
    x = torch.randn(6, 3, 32, 32)
    model.mvp.pool.count.copy_(torch.tensor([5, 0, 3, 9, 1, 0, 2, 7, 4, 6]))
    sel_train = model.train()(x).selection.idx
    sel_eval = model.eval()(x).selection.idx
    assert torch.equal(sel_train, sel_eval)
    chosen = int(sel_train[0, 0])
    model.mvp.pool.count[chosen] = 10**6  # a heavily used prompt is avoided
    assert int(model(x).selection.idx[0, 0]) != chosen


def _gsf_per_sample_reference(f, mu, w, b, seen, y):
    """The official computation: a head copy, one backward per sample for g_i, one batch backward for G."""
    head = torch.nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        head.weight.copy_(w)
        head.bias.copy_(b)
    z = head(f.detach()) * mu.detach() + seen
    g = []
    for i in range(len(y)):
        head.zero_grad()
        F.cross_entropy(z[i : i + 1], y[i : i + 1]).backward(retain_graph=True)
        g.append(head.weight.grad[y[i]].clone())
    head.zero_grad()
    F.cross_entropy(z, y).backward()
    big_g = head.weight.grad
    return torch.stack([1 - F.cosine_similarity(g[i], big_g[y[i]], dim=0) for i in range(len(y))])


def _loss_inputs(b=12, c=8, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    f, w = torch.randn(b, d, generator=g), torch.randn(c, d, generator=g) * 0.3
    bias, mu = torch.randn(c, generator=g) * 0.1, 2 * torch.sigmoid(torch.randn(b, c, generator=g))
    seen = torch.zeros(c)
    seen[6:] = float("-inf")
    y = torch.randint(0, 6, (b,), generator=g)
    return f, w, bias, mu, seen, y


def test_gsf_closed_form_equals_per_sample_backward():
    f, w, bias, mu, seen, y = _loss_inputs()
    z_bar = (f @ w.t() + bias) * mu + seen
    ign = gsf_ignore(f, mu, z_bar, y)
    ref = _gsf_per_sample_reference(f, mu, w, bias, seen, y)
    assert (ign - ref).abs().max() <= 1e-6
    assert ign.min() >= 0 and ign.max() <= 2


def test_gsf_batch_vs_per_sample_reduction():
    f, w, bias, mu, seen, y = _loss_inputs(seed=1)
    z = (f @ w.t() + bias) * mu + seen
    ce = F.cross_entropy(z, y, reduction="none")
    ign = gsf_ignore(f, mu, z, y)
    batch = gsf_loss(ce, ign, 0.5, 2.0, "batch")
    assert torch.allclose(batch, ce.mean() * (0.5 + 0.5 * (ign**2).mean()))
    per_sample = gsf_loss(ce, ign, 0.5, 2.0, "per_sample")
    assert torch.allclose(per_sample, ((0.5 + 0.5 * ign**2) * ce).mean())
    assert abs(batch.item() - per_sample.item()) > 1e-4


def test_afs_logits_closed_form():
    f, w, bias, mu, seen, y = _loss_inputs(seed=2)
    z = afs_logits(f, w, bias, mu, seen, y, margin=0.5)
    for i in range(len(y)):
        cps = 1 - torch.dot(w[y[i]], f[i]) / (w[y[i]].norm() * f[i].norm()) + 0.5
        assert 0.5 <= cps <= 2.5
        assert torch.allclose(z[i], (w @ (f[i] / cps) + bias) * mu[i] + seen, atol=1e-5)


@pytest.mark.parametrize("negatives", ["selected", "all_keys"])
def test_cvpt_broadcasting_and_key_only_gradient(negatives):
    torch.manual_seed(3)
    pool = PromptPool(6, 16, length=2, layers=(0,))
    pool.count.copy_(torch.tensor([0, 4, 1, 7, 2, 3]))
    q = torch.randn(5, 16)
    sel = pool.select(q)
    d_sel, idx, m = sel.selected_distance[:, 0], sel.top1, sel.mass[sel.top1]
    kd = pool.key_distance()
    loss = cvpt_loss(kd, d_sel, idx, sel.mass, negatives)
    kd, d_sel = kd.detach(), d_sel.detach()
    b, p = len(idx), 6
    if negatives == "selected":
        a = sum(math.exp(kd[idx[i], j] / m[k]) for i in range(b) for k in range(b) for j in range(p)) / (b * b * p)
    else:
        a = sum(math.exp(kd[i, j] / m[k]) for k in range(b) for i in range(p) for j in range(p)) / (b * p * p)
    d = sum(math.exp(d_sel[k] / m[i]) for i in range(b) for k in range(b)) / (b * b)
    assert loss.item() == pytest.approx(-math.log(a / (d + a) + 1e-6), rel=1e-5)
    loss.backward()
    assert pool.keys.grad is not None and pool.keys.grad.abs().sum() > 0 and pool.prompts.grad is None


@pytest.mark.parametrize(
    "flags", [{}, {"use_contrastiv": False, "use_afs": False}, {"use_gsf": False, "use_mask": False}]
)
def test_mvp_loss_matches_components(backbone, flags):
    model = _model(backbone, **flags)
    x, y = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 3])
    seen = torch.zeros(10)
    seen[4:] = float("-inf")
    out = model(x)
    cfg, head, sel = model.cfg, model.mvp.head, out.selection
    if not cfg.use_mask:
        assert torch.equal(out.mu, torch.ones_like(out.mu))
    z = out.logits * out.mu + seen
    z_loss = afs_logits(out.feats, head.weight, head.bias, out.mu, seen, y) if cfg.use_afs else z
    ce = F.cross_entropy(z_loss, y, reduction="none")
    cls = gsf_loss(ce, gsf_ignore(out.feats, out.mu, z, y), 0.5, 2.0) if cfg.use_gsf else ce.mean()
    d = sel.selected_distance[:, 0]
    key = cvpt_loss(model.mvp.pool.key_distance(), d, sel.top1, sel.mass) if cfg.use_contrastiv else d.mean()
    if not cfg.use_contrastiv:
        assert torch.equal(sel.mass, torch.ones(10))
    assert torch.allclose(mvp_loss(model, out, y, seen), cls + key)


def _tiny_stream(n_classes=10, per_class=12, batch_size=8):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n_classes * per_class, 3, 32, 32, generator=g)
    y = [c for c in range(n_classes) for _ in range(per_class)]  # class-blocked
    test = TensorImageDataset(x[::4].clone(), y[::4])
    return si_blurry_benchmark(TensorImageDataset(x, y), test, n_tasks=2, seed=1, online_experience_size=batch_size)


def _strategy(backbone, bench, **cfg):
    torch.manual_seed(2)
    cfg = MVPConfig(**{"eval_every": 40, "batch_size": 8, **cfg})  # the stream's incoming batches (_tiny_stream)
    return MVP.from_config(cfg, backbone=backbone, benchmark=bench, device="cpu", evaluator=None)


def test_online_stream_count_backbone_and_metrics(backbone):
    bench = _tiny_stream()
    s = _strategy(backbone, bench)
    before = copy.deepcopy(backbone.state_dict())
    for exp in bench.train_stream:
        s.train(exp)
    assert int(s.model.mvp.pool.count.sum()) == 3 * sum(bench.info.task_sizes)
    assert s.seen_samples == sum(bench.info.task_sizes)
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    assert s.optimizer.param_groups[0]["lr"] == 5e-3 and len(s.optimizer.state) == 6  # one Adam, never reset
    res = anytime_metric(s.evaluator).result()
    assert set(res) == {"A_auc", "A_last", "A_avg", "F_last"} and all(0 <= v <= 1 for v in res.values())


def test_replay_memory_runs_and_feeds_updates(backbone):
    bench = _tiny_stream()
    s = _strategy(backbone, bench, memory_size=10, memory_batch_size=4)
    sizes = []
    orig = s.criterion

    def spy():
        if s.is_training:
            sizes.append(len(s.mb_y))
        return orig()

    after = []
    orig_after = s._after_training_iteration

    def after_spy(**kw):
        after.append((len(s.mb_y), len(s.mb_output)))
        return orig_after(**kw)

    s.criterion, s._after_training_iteration = spy, after_spy
    for exp in bench.train_stream:
        s.train(exp)
    n = sum(bench.info.task_sizes)
    assert len(s.memory) == 10 and s.memory.seen == n
    assert sizes[:3] == [8, 8, 8] and sizes[3:6] == [12, 12, 12]  # replay from the second batch on
    assert int(s.model.mvp.pool.count.sum()) == sum(sizes)
    assert all(ny == no <= 8 for ny, no in after)  # the stream batch is restored after its updates


def test_reservoir_memory_keeps_uniform_references():
    torch.manual_seed(0)
    ds = TensorImageDataset(torch.arange(100.0).view(100, 1, 1, 1), list(range(100)))
    mem = ReservoirMemory(10)
    mem.add(ds, range(100))
    assert len(mem) == 10 and mem.seen == 100
    x, y = mem.sample(4)
    assert x.shape == (4, 1, 1, 1) and torch.equal(x.flatten().long(), y)
    assert len(set(i for _, i in mem.items)) == 10


def test_query_cache_is_exact(backbone):
    bench = _tiny_stream(per_class=6)
    params = []
    for cache in (True, False):
        s = _strategy(backbone, bench, augmentation="none", cache_query=cache, eval_every=0)
        for exp in bench.train_stream:
            s.train(exp)
        params.append([p.detach().clone() for p in s.model.mvp.parameters()] + [s.model.mvp.pool.count])
    assert all(torch.equal(a, b) for a, b in zip(*params))


def test_bad_config_raises():
    with pytest.raises(ValueError, match="cvpt_negatives"):
        MVPConfig(cvpt_negatives="diagonal")
    with pytest.raises(ValueError, match="prompt layers"):
        MVPModel(PromptedViT(create_vit("vit_tiny_patch16_224", pretrained=False, **{**TINY, "depth": 2})), 5)


def test_mvp_step_depth_is_pinned(backbone, monkeypatch):
    """One MVP step is a short stack: ``train()`` -> the template's loop -> ``sgd_update`` -> ``criterion`` ->
    ``mvp_loss`` (5 frames; 9 before the templates owned their loop), and the forward reaches ``forward_logits`` in 6
    (9 before, entering templates/online.py three times)."""
    import traceback

    import ctta.strategies.mvp as mvp_module

    stacks = {}
    real_loss, real_logits = mvp_module.mvp_loss, MVP.forward_logits

    def loss(*args):
        stacks.setdefault("loss", traceback.extract_stack())
        return real_loss(*args)

    def logits(self):
        stacks.setdefault("forward", traceback.extract_stack())
        return real_logits(self)

    monkeypatch.setattr(mvp_module, "mvp_loss", loss)
    monkeypatch.setattr(MVP, "forward_logits", logits)
    bench = _tiny_stream()
    s = _strategy(backbone, bench, eval_every=-1)
    s.train(bench.train_stream[0])
    for key, bound in (("loss", 5), ("forward", 6)):
        stack = stacks[key]
        start = max(i for i, f in enumerate(stack) if f.name == "test_mvp_step_depth_is_pinned")
        frames = stack[start + 1 :]
        assert frames[0].name == "train" and len(frames) <= bound, [f"{f.filename}:{f.name}" for f in frames]
        assert sum(f.filename.endswith("online.py") for f in frames) <= 2


def test_incoming_batch_size_is_the_strategys_own(backbone):
    """``train_mb_size`` comes from the strategy alone (its argument or its config's ``batch_size``, default 64),
    never from the benchmark's record of the stream (Si-Blurry's ``batch_size`` there is the scenario's)."""
    bench = _tiny_stream(batch_size=8)
    make = lambda cfg: MVP.from_config(cfg, backbone=backbone, benchmark=bench, device="cpu", evaluator=None)  # noqa: E731
    assert make(MVPConfig()).train_mb_size == 64
    assert make(MVPConfig(batch_size=5)).train_mb_size == 5
    assert MVP(model=backbone, num_classes=10, batch_size=5, train_mb_size=7, device="cpu").train_mb_size == 7
