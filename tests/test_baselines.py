"""L2P and DualPrompt baselines (spec si-blurry-mvp §12) on a tiny random ViT and tiny synthetic streams."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from ctta.scenarios.si_blurry import si_blurry_benchmark
from ctta.strategies.dualprompt import DualPrompt, DualPromptConfig, DualPromptModel
from ctta.strategies.l2p import L2P, L2PConfig, L2PModel, cls_position
from torch.utils.data import TensorDataset

from ctta.data.replay import ReservoirMemory
from ctta.data.siblurry_aug import SiBlurryTrainAugment, cutmix

MEAN = STD = (0.5, 0.5, 0.5)


def tiny_bench(n_classes=4, per_class=6, size=32, batch=8, seed=0, online=False):
    """Class-blocked synthetic 32 px images in [0, 1] as a 2-task Si-Blurry benchmark."""
    g = torch.Generator().manual_seed(seed)
    targets = [c for c in range(n_classes) for _ in range(per_class)]
    x = torch.rand(len(targets), 3, size, size, generator=g)
    x = (x * 255).round() / 255
    train = TensorDataset(x, torch.tensor(targets))
    train.targets = targets
    test = TensorDataset(x[::2], torch.tensor(targets[::2]))
    test.targets = targets[::2]
    aug = SiBlurryTrainAugment(MEAN, STD, "cifar10", img_size=size)
    return si_blurry_benchmark(train, test, n_tasks=2, seed=1, online_experience_size=batch, online=online,
                               train_augment=aug)


def build(cls, cfg, backbone, bench, batch=8):
    """The strategy on ``bench`` with incoming batches of ``batch`` (a strategy setting, as in ``tiny_bench``)."""
    import dataclasses

    from ctta.evaluation import make_evaluator

    cfg = dataclasses.replace(cfg, batch_size=batch)
    return cls.from_config(cfg, backbone=backbone, benchmark=bench, device="cpu", evaluator=make_evaluator())


def run_stream(strategy, bench):
    for exp in bench.train_stream:
        strategy.train(exp)
    return strategy


def params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


# ------------------------------------------------------------------------ forwards vs the reference layout
def test_l2p_forward_equals_prompts_inserted_after_cls(tiny_vit):
    torch.manual_seed(0)
    model = L2PModel(tiny_vit, num_classes=7).eval()
    x = torch.randn(3, 3, 32, 32)
    vit = tiny_vit.vit
    with torch.no_grad():
        t = tiny_vit.embed(x)  # reference: cls + patches + pos_embed
        q = vit.norm(vit.blocks(t))[:, 0]
        d = 1 - F.cosine_similarity(q.unsqueeze(1), model.pool.keys, dim=-1)  # (B, P)
        idx = d.topk(5, dim=1, largest=False).indices
        p = model.pool.prompts[idx].reshape(3, 25, -1) + vit.pos_embed[:, 0]
        h = vit.norm(vit.blocks(torch.cat([t[:, :1], p, t[:, 1:]], dim=1)))
        expected = model.head(h[:, 1:26].mean(1))
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_dualprompt_forward_equals_append_and_truncate(tiny_vit):
    torch.manual_seed(0)
    model = DualPromptModel(tiny_vit, num_classes=7).eval()
    x = torch.randn(3, 3, 32, 32)
    vit = tiny_vit.vit
    with torch.no_grad():
        t = tiny_vit.embed(x)
        q = vit.norm(vit.blocks(t))[:, 0]
        d = 1 - F.cosine_similarity(q.unsqueeze(1), model.e_pool.keys, dim=-1)
        e = model.e_pool.prompts[d.argmin(1)].view(3, 3, 20, -1) + vit.pos_embed[:, :1].unsqueeze(1)  # (B, 3, 20, D)
        g = (model.g_prompts + vit.pos_embed[:, 0]).view(2, 5, -1)
        h, n = t, t.shape[1]
        for i, blk in enumerate(vit.blocks):
            extra = [g[i].expand(3, -1, -1)] if i < 2 else [e[:, i - 2]] if 2 <= i <= 4 else []
            h = blk(torch.cat([h, *extra], dim=1))[:, :n]
        expected = model.head(vit.norm(h)[:, 0])
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_dualprompt_g_and_e_in_the_same_layer_put_g_first(tiny_vit):
    model = DualPromptModel(tiny_vit, 5, g_layers=(2,), e_layers=(2, 3), e_length=4)
    prompts = model.layer_prompts(torch.zeros(2, 1, dtype=torch.long))
    pos = cls_position(tiny_vit)
    assert prompts[2].shape == (2, 5 + 4, tiny_vit.embed_dim)
    torch.testing.assert_close(prompts[2][0, :5], model.g_prompts + pos)
    torch.testing.assert_close(prompts[2][0, 5:], model.e_pool.prompts[0, :4] + pos)


def test_inits_follow_the_reference(tiny_vit):
    l2p = L2PModel(tiny_vit, 10)
    dp = DualPromptModel(tiny_vit, 10)
    for t in (l2p.pool.keys, l2p.pool.prompts, dp.e_pool.keys, dp.e_pool.prompts, dp.g_prompts):
        assert t.min() >= -1 and t.max() <= 1 and t.abs().mean() > 0.3  # U(-1, 1)
    assert l2p.pool.prompts.shape == (10, 5, 48) and dp.e_pool.prompts.shape == (10, 60, 48)
    assert torch.equal(l2p.head.bias, torch.zeros(10)) and l2p.head.weight.std() < 0.05


# ------------------------------------------------------------------------------------------ training runs
@pytest.mark.parametrize("train_keys", [False, True])
def test_l2p_trains_and_keys_follow_the_quirk(tiny_vit, train_keys):
    bench = tiny_bench()
    cfg = L2PConfig(online_iters=2, eval_every=10, l2p_train_keys=train_keys)
    strategy = build(L2P, cfg, tiny_vit, bench)
    backbone_before = {k: v.clone() for k, v in tiny_vit.state_dict().items()}
    before = params(strategy.model)
    run_stream(strategy, bench)
    assert torch.isfinite(strategy.loss)
    assert all(torch.equal(v, tiny_vit.state_dict()[k]) for k, v in backbone_before.items())
    after = params(strategy.model)
    assert not torch.equal(after["pool.prompts"], before["pool.prompts"])
    assert not torch.equal(after["head.weight"], before["head.weight"])
    assert torch.equal(after["pool.keys"], before["pool.keys"]) is (not train_keys)
    assert strategy.seen_samples == sum(bench.info.task_sizes) and len(strategy.exposed) == 4


def test_online_sub_experiences_keep_the_protocol(tiny_vit):
    from ctta.evaluation import anytime_metric

    bench = tiny_bench(online=True)
    strategy = build(L2P, L2PConfig(online_iters=1, eval_every=0, cutmix_prob=0.0), tiny_vit, bench)
    run_stream(strategy, bench)  # one train() per online sub-experience of 8 samples
    assert strategy.seen_samples == sum(bench.info.task_sizes)
    n_tasks = sum(1 for n in bench.info.task_sizes if n)
    assert len(anytime_metric(strategy.evaluator).task_end) == n_tasks  # task-end evaluation at each boundary


def test_dualprompt_trains_keys_with_the_pull_loss(tiny_vit):
    bench = tiny_bench()
    strategy = build(DualPrompt, DualPromptConfig(online_iters=1, eval_every=10), tiny_vit, bench)
    before = params(strategy.model)
    run_stream(strategy, bench)
    after = params(strategy.model)
    assert torch.isfinite(strategy.loss)
    for name in ("e_pool.keys", "e_pool.prompts", "g_prompts", "head.weight"):
        assert not torch.equal(after[name], before[name]), name
    assert all(torch.equal(after[n], before[n]) for n in before if n.startswith("backbone."))


def test_pull_loss_closed_form(tiny_vit):
    model = DualPromptModel(tiny_vit, 3, pull_weight=0.7)
    x = torch.randn(4, 3, 32, 32)
    model(x)
    q = tiny_vit.query(x, final_norm=True)
    d = 1 - F.cosine_similarity(q.unsqueeze(1), model.e_pool.keys, dim=-1)  # (B, P)
    torch.testing.assert_close(model.aux_loss(), 0.7 * d.min(1).values.mean())


def test_replay_memory_batches(tiny_vit):
    bench = tiny_bench(batch=6)
    cfg = DualPromptConfig(online_iters=2, eval_every=0, memory_size=5, memory_batch_size=3, cutmix_prob=0.0)
    strategy = build(DualPrompt, cfg, tiny_vit, bench, batch=6)
    sizes, stream_sizes = [], []
    orig_forward, orig_after = strategy.forward_logits, strategy.after_incoming_batch

    def forward_logits():
        if strategy.is_training:
            n_stream, n_mem = len(strategy._stream_batch[0]), len(strategy.memory)
            sizes.append((n_stream + min(3, n_mem), len(strategy.mb_x), len(strategy.mb_y)))
        return orig_forward()

    def after_incoming_batch():
        orig_after()
        stream_sizes.append((len(strategy._stream_batch[0]), len(strategy.mb_y), len(strategy.mb_output)))

    strategy.forward_logits, strategy.after_incoming_batch = forward_logits, after_incoming_batch
    run_stream(strategy, bench)
    assert strategy.memory.seen == sum(bench.info.task_sizes) and len(strategy.memory) == 5
    assert all(expected == n_x == n_y for expected, n_x, n_y in sizes)  # stream + min(3, |memory|) replayed
    assert sizes[0][0] == 6 and sizes[-1][0] > 6
    assert all(n == n_y == n_out for n, n_y, n_out in stream_sizes)  # plugins see the stream batch only
    assert set(strategy.memory.labels()) <= set(range(4))


def test_cutmix_criterion_is_the_mixed_ce(tiny_vit):
    bench = tiny_bench()
    strategy = build(L2P, L2PConfig(cutmix_prob=1.0, online_iters=1, eval_every=0), tiny_vit, bench)
    seen = []
    orig = strategy.criterion

    def criterion():
        loss = orig()
        if not strategy.is_training:
            return loss
        perm, lam = strategy._mix
        logits, y = strategy.mb_logits_pos, strategy.mb_y_pos
        seen.append((loss, lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm])))
        return loss

    strategy.criterion = criterion
    strategy.train(bench.train_stream[0])
    assert seen
    for loss, expected in seen:
        torch.testing.assert_close(loss, expected)


def test_cutmix_box_and_lambda():
    torch.manual_seed(3)
    x = torch.arange(2 * 1 * 10 * 10, dtype=torch.float32).view(2, 1, 10, 10)
    for _ in range(20):
        mixed, perm, lam = cutmix(x, alpha=1.0)
        changed = (mixed != x).any(1)  # (B, H, W)
        if torch.equal(perm, torch.arange(2)):
            assert torch.equal(mixed, x)
            continue
        assert changed[0].float().mean().item() == pytest.approx(1 - lam)
        assert torch.equal(mixed[changed[0].unsqueeze(0).expand(2, 1, -1, -1).view(2, 1, 10, 10)].view(2, -1)[0],
                           x[1][changed[1:2]])  # fmt: skip
    with pytest.raises(ValueError, match="alpha"):
        cutmix(x, alpha=0.0)


def test_reservoir_memory():
    ds = TensorDataset(torch.arange(50).float().view(50, 1), torch.arange(50) % 7)
    ds.targets = (torch.arange(50) % 7).tolist()
    mem = ReservoirMemory(10)
    mem.add(ds, range(10))
    assert [i for _, i in mem.items] == list(range(10))  # appended in order while not full
    torch.manual_seed(0)
    mem.add(ds, range(10, 50))
    assert len(mem) == 10 and mem.seen == 50
    assert any(i >= 10 for _, i in mem.items)
    x, y = mem.sample(4)
    assert x.shape == (4, 1) and torch.equal(y, x[:, 0].long() % 7)
    assert len(mem.sample(100)[0]) == 10  # distinct slots, at most the memory size
    off = ReservoirMemory(0)
    off.add(ds, range(5))
    assert len(off) == 0 and off.seen == 5
    with pytest.raises(ValueError):
        off.sample(1)
    with pytest.raises(ValueError):
        ReservoirMemory(-1)


def test_config_and_model_validation(tiny_vit):
    with pytest.raises(ValueError, match="cutmix"):
        L2PConfig(cutmix_prob=1.5)
    with pytest.raises(ValueError, match="online_iters"):
        DualPromptConfig(online_iters=0)
    with pytest.raises(ValueError, match="top_k"):
        L2PModel(tiny_vit, 3, pool_size=4, top_k=5)
    with pytest.raises(ValueError, match="layers"):
        DualPromptModel(tiny_vit, 3, e_layers=(2, 9))
