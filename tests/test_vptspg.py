"""VPTSP-G (strategies/vptspg): Proxy-Anchor and the GRU memory update against hand / explicit computations, the
class-balanced sampler, only the declared parameters train (BitFit copies, prompts, heads, GRU, proxies), the cosine
schedule, and the run's retrieval metrics against a brute-force computation on its test embeddings."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from ctta.scenarios.retrieval import retrieval_benchmark
from ctta.strategies.vptspg import VPTSPG, ClassBalancedBatchSampler, ProxyGRUCell, VPTSPGModel, proxy_anchor_loss
from ctta.strategies.vptspg.parts import cosine_lr

from ctta.backbones.vit import PromptedViT, create_vit
from ctta.data.digits import TensorImageDataset, load_digits
from ctta.retrieval_metrics import map_at_r, neighbours
from tests._conformance_cases import tiny_vit


# ------------------------------------------------------------------------------------------------ Proxy-Anchor
def _hand_loss(emb, labels, proxies, alpha, delta, pos_mean):
    """Proxy-Anchor with plain Python loops over classes and samples."""
    n_cls = len(proxies)
    cos = lambda a, b: sum(x * y for x, y in zip(a, b)) / math.hypot(*a) / math.hypot(*b)  # noqa: E731
    pos, neg, present = 0.0, 0.0, 0
    for c in range(n_cls):
        ps = [math.exp(-alpha * (cos(e, proxies[c]) - delta)) for e, y in zip(emb, labels) if y == c]
        ns = [math.exp(alpha * (cos(e, proxies[c]) + delta)) for e, y in zip(emb, labels) if y != c]
        pos += math.log(1 + sum(ps)) if ps else 0.0
        neg += math.log(1 + sum(ns)) if ns else 0.0
        present += bool(ps)
    return pos / (present if pos_mean == "present" else n_cls) + neg / n_cls


@pytest.mark.parametrize("pos_mean", ["all", "present"])
def test_proxy_anchor_equals_the_hand_computation(pos_mean):
    emb = [[1.0, 0.2], [0.8, -0.1], [-0.3, 1.0], [0.1, 0.9]]
    labels = [0, 0, 1, 1]  # class 2 has no positive in the batch
    proxies = [[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]]
    got = proxy_anchor_loss(torch.tensor(emb), torch.tensor(labels), torch.tensor(proxies), 4.0, 0.1, pos_mean)
    assert float(got) == pytest.approx(_hand_loss(emb, labels, proxies, 4.0, 0.1, pos_mean), rel=1e-5)


def test_proxy_anchor_default_scale_and_empty_classes():
    """alpha 32: large exponents stay finite; a class without positives adds 0 to the positive sum."""
    g = torch.Generator().manual_seed(0)
    emb, prox = torch.randn(6, 5, generator=g), torch.randn(4, 5, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = proxy_anchor_loss(emb, labels, prox)
    want = _hand_loss(emb.tolist(), labels.tolist(), prox.tolist(), 32.0, 0.1, "all")
    assert torch.isfinite(loss) and float(loss) == pytest.approx(want, rel=1e-4)
    with pytest.raises(ValueError, match="pos_mean"):
        proxy_anchor_loss(emb, labels, prox, pos_mean="some")


# ------------------------------------------------------------------------------------------------ GRU memory
def test_tanh_cell_equals_torch_gru_cell_without_hidden_biases():
    torch.manual_seed(0)
    cell = ProxyGRUCell(4, 3, "tanh")
    with torch.no_grad():
        cell.b_i.normal_()
    ref = torch.nn.GRUCell(4, 3)
    with torch.no_grad():  # torch's gate order: r, z, n; weights (3H, in)
        ref.weight_ih.copy_(torch.cat([w.T for w in cell.w_i]))
        ref.weight_hh.copy_(torch.cat([w.T for w in cell.w_h]))
        ref.bias_ih.copy_(cell.b_i.flatten())
        ref.bias_hh.zero_()
    x, h = torch.randn(5, 4), torch.randn(5, 3)
    torch.testing.assert_close(cell(x, h), ref(x, h))


def _relu_gru(cell, x, h):
    """The reference's gru_relu step written out."""
    (wir, wiz, win), (whr, whz, whn), (br, bz, bn) = cell.w_i, cell.w_h, cell.b_i
    r = torch.sigmoid(x @ wir + h @ whr + br)
    z = torch.sigmoid(x @ wiz + h @ whz + bz)
    n = torch.relu(x @ win + r * (h @ whn) + bn)
    return (1 - z) * n + z * h


def _tiny_model(n_classes=4, k=2):
    torch.manual_seed(0)
    return VPTSPGModel(tiny_vit(), n_classes, embed_dim=8, n_prompts=2, n_class_prompts=1, k=k)


def test_memory_update_and_proxies_equal_the_explicit_computation():
    model = _tiny_model()
    x, labels = torch.randn(4, 3, 32, 32), torch.tensor([2, 2, 0, 0])
    memory0 = model.memory.clone()
    with torch.no_grad():
        got = model.semantic_proxies(x, labels)
        # explicit: every sample with its class's prompts, proxy head, normalise; GRU over each class's k samples
        prompts = {i: model.class_prompts[i][labels] for i in range(model.backbone.depth)}
        feats = model.backbone(x, prompts=prompts)  # biases equal the backbone's at the start
        p = F.normalize(model.proxy_head(feats), dim=-1)
        memory = memory0.clone()
        for c, rows in ((2, [0, 1]), (0, [2, 3])):
            h = memory0[c]
            for r in rows:
                h = _relu_gru(model.gru, p[r], h)
            memory[c] = h
        memory = F.normalize(memory, dim=-1)
    torch.testing.assert_close(model.memory, memory)
    torch.testing.assert_close(got, 0.5 * model.proxy_bias + 0.5 * memory)
    torch.testing.assert_close(model.memory[[1, 3]], memory0[[1, 3]])  # classes not in the batch keep their row


def test_prompted_features_equal_the_reference_prepend_run_strip_loop():
    """The reference's ``_forward_vpt_block``: prompts PREPENDED to the tokens, timm's block, prompt outputs cut off;
    ctta appends them and drops their outputs: the same CLS feature (attention ignores token order)."""
    model = _tiny_model()
    x, labels = torch.randn(4, 3, 32, 32), torch.tensor([1, 1, 3, 3])
    vit = model.backbone.vit
    with torch.no_grad():
        t = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
        for i, blk in enumerate(vit.blocks):
            p = model.class_prompts[i][labels]  # (B, n, D)
            t = blk(torch.cat([p, t], dim=1))[:, p.shape[1] :]
        want = vit.norm(t)[:, 0]
        got = model.features(x, model.layer_prompts(model.class_prompts, 0, labels))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_proxy_branch_refuses_a_batch_that_is_not_class_balanced():
    model = _tiny_model()
    with pytest.raises(ValueError, match="consecutive"):
        model.semantic_proxies(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1]))


def test_bitfit_copies_replace_the_backbone_biases():
    model = _tiny_model()
    x = torch.randn(2, 3, 32, 32)
    plain = PromptedViT(model.backbone.vit)
    torch.testing.assert_close(model.features(x, {}), plain(x))
    assert model.bias_names and all("bias" in n for n in model.bias_names)
    with torch.no_grad():
        model.biases[model.bias_names.index("vit.blocks.0.attn.qkv.bias")].add_(0.5)
    assert not torch.allclose(model.features(x, {}), plain(x))


def test_prompt_depth_and_step_give_fewer_tokens_per_block():
    """The reference's block step: block i gets n - i * step tokens, in the first ``depth`` blocks only."""
    torch.manual_seed(0)
    model = VPTSPGModel(tiny_vit(), 3, 8, n_prompts=5, n_class_prompts=4, layout=(4, 2, 2, 4))
    assert model.prompts.shape[0] == 4 and model.class_prompts.shape[:2] == (2, 3)
    shared = model.layer_prompts(model.prompts, 2)
    assert {i: t.shape[0] for i, t in shared.items()} == {0: 5, 1: 3, 2: 1}
    rows = torch.tensor([2, 2, 0, 0])
    per_class = model.layer_prompts(model.class_prompts, 4, rows)
    assert list(per_class) == [0] and torch.equal(per_class[0], model.class_prompts[0][rows])


# ------------------------------------------------------------------------------------------------ sampler
def test_class_balanced_batches():
    targets = [c for c in range(6) for _ in range(5)] + [6]  # class 6 has a single sample
    sampler = ClassBalancedBatchSampler(targets, batch_size=8, k=2, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == len(targets) // 8
    for b in batches:
        labels = [targets[i] for i in b]
        assert len(b) == 8 and labels[::2] == labels[1::2]  # P = 4 classes x k = 2, each class's pair adjacent
        assert len(set(labels)) == 4  # distinct classes
        assert all(len(set(b[j : j + 2])) == 2 for j in range(0, 8, 2) if targets[b[j]] != 6)  # k distinct samples
    many = ClassBalancedBatchSampler(targets, batch_size=8, k=2, seed=1)
    many.n_batches = 200
    drawn = [targets[i] for b in many for i in b]
    assert set(drawn) == set(range(7))  # every class is drawn (the 1-sample class repeated to k)
    few = ClassBalancedBatchSampler([0, 0, 1, 1, 1], batch_size=8, k=2)
    assert [len(b) for b in few] == [4]  # P capped at the 2 classes present
    with pytest.raises(ValueError, match="multiple"):
        ClassBalancedBatchSampler(targets, batch_size=7, k=2)


def test_cosine_schedule_equals_torch_cosine_annealing():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.005)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=50, eta_min=1e-8)
    for epoch in range(15):
        assert cosine_lr(0.005, epoch, 50, 1e-8) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
        opt.step()
        sched.step()


# ------------------------------------------------------------------------------------------------ a short run
@pytest.fixture(scope="module")
def trained():
    """VPTSP-G trained one epoch on a digits retrieval benchmark (classes 0-4), evaluated on classes 5-9."""
    torch.manual_seed(0)
    train, _ = load_digits(img_size=32)
    subset = TensorImageDataset(train.images[:400], train.targets[:400], train.classes)  # ~200 per half
    bench = retrieval_benchmark(subset, classnames=train.classes)
    vit = create_vit("ctta-tiny-vit", True)  # the shipped pretrained tiny ViT: embeddings without near-ties
    labels = _Labels()
    strategy = VPTSPG.from_config(VPTSPG.config_class(embed_dim=16, n_prompts=2, n_class_prompts=1, epochs=1,
                                                      batch_size=10, eval_batch_size=512),
                                  backbone=vit, benchmark=bench, device="cpu", evaluator=_silent(),
                                  plugins=[labels])  # fmt: skip
    strategy.batch_labels = labels.seen
    before = {n: p.detach().clone() for n, p in strategy.model.named_parameters()}
    vit_before = {k: v.clone() for k, v in vit.state_dict().items()}
    memory = strategy.model.memory.clone()
    strategy.train(bench.train_stream[0])
    res = strategy.eval(bench.test_stream)
    return strategy, bench, before, vit_before, memory, res


class _Labels(SupervisedPlugin):
    """The labels of every training mini-batch."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[int]] = []

    def before_forward(self, strategy, **kwargs) -> None:
        self.seen.append(strategy.mb_y.tolist())


def _silent():
    import warnings

    from avalanche.training.plugins import EvaluationPlugin

    from ctta.retrieval_metrics import RetrievalMetrics

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return EvaluationPlugin(RetrievalMetrics(), loggers=[])


def test_only_the_declared_parameters_train(trained):
    strategy, bench, before, vit_before, memory, _ = trained
    model = strategy.model
    assert model.proxy_bias.shape[0] == 5  # one proxy per training class
    declared = ("biases.", "head.", "proxy_head.", "gru.", "proxy_bias", "prompts", "class_prompts")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(declared) for n in trainable)
    assert not any(n.startswith("backbone.") for n in trainable)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable  # every declared group moved, nothing else
    assert all(torch.equal(v, strategy.model.backbone.vit.state_dict()[k]) for k, v in vit_before.items())
    assert not torch.equal(model.memory, memory)  # the GRU memory was updated (a buffer, not a parameter)


def test_training_batches_are_class_balanced(trained):
    strategy, bench = trained[:2]
    n_train = len(bench.train_stream[0].dataset)
    assert len(strategy.batch_labels) == n_train // 10  # one epoch: N // (P k) batches
    for y in strategy.batch_labels:  # 5 distinct classes x 2 adjacent samples
        assert len(y) == 10 and y[::2] == y[1::2] and sorted(y[::2]) == [0, 1, 2, 3, 4]


def _brute_force(emb, labels):
    """Recall@K and MAP@R from a full sort of cosine similarities per query (self excluded). The similarities are
    float32 like the run's, so that near-ties order the same way."""
    e = F.normalize(emb.float(), dim=-1)
    cos = e @ e.T
    n, recall, aps = len(e), {k: 0 for k in (1, 2, 4, 8)}, []
    for q in range(n):
        sims = cos[q].tolist()
        order = sorted((j for j in range(n) if j != q), key=lambda j: (-sims[j], j))
        rel = [int(labels[j] == labels[q]) for j in order]
        for k in recall:
            recall[k] += any(rel[:k])
        r = sum(rel)
        aps.append(sum(sum(rel[: i + 1]) / (i + 1) * rel[i] for i in range(r)) / r)
    return {f"recall_at_{k}": v / n for k, v in recall.items()} | {"map_at_r": sum(aps) / n}


def test_equal_similarities_rank_by_sample_index():
    """Exact ties (identical embeddings) are ranked by index, as documented (``topk`` ordered them arbitrarily)."""
    emb = torch.tensor([[1.0, 0.0]] * 40 + [[0.0, 1.0]] * 3)
    nn = neighbours(emb, 39)
    assert all(nn[q].tolist() == [j for j in range(40) if j != q][:39] for q in range(40))
    labels = torch.tensor([0, 1] * 20 + [2, 2, 2])
    assert map_at_r(emb, labels) == pytest.approx(_brute_force(emb, labels.tolist())["map_at_r"], abs=1e-6)


def test_run_metrics_equal_brute_force_on_the_test_embeddings(trained):
    strategy, bench, *_, res = trained
    test = bench.test_stream[0].dataset
    x = torch.stack([test[i][0] for i in range(len(test))])
    labels = [int(test[i][1]) for i in range(len(test))]
    assert set(labels) == {5, 6, 7, 8, 9}  # unseen classes
    strategy.model.eval()
    with torch.no_grad():
        emb = strategy.model(x)
    got = strategy.evaluator.metrics[0].result()
    for key, want in _brute_force(emb, labels).items():
        assert got[key] == pytest.approx(want, abs=1e-6), key
    assert res["MAP_at_R/eval_phase/test_stream/Exp000"] == pytest.approx(got["map_at_r"])
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    km = KMeans(n_clusters=5, n_init=1, max_iter=20, random_state=0).fit(emb.numpy())
    assert got["nmi"] == pytest.approx(normalized_mutual_info_score(labels, km.labels_))
