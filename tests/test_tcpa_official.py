"""TCPA's official training pieces: timm mixup + soft-target cross-entropy against a hand computation, the odd-batch
rule, the ``mixup: false`` / ``label_smoothing`` switches, the CUB pixel prompter, and that the default strategy
trains on mixed batches (the official behaviour)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from ctta.scenarios.class_incremental import class_incremental_benchmark
from ctta.strategies.tcpa import (
    TCPA,
    PixelPrompter,
    ReferenceBestTestEpoch,
    TCPAConfig,
    TCPAModel,
    dataset_top1,
    make_mixup,
    mix_batch,
)

from ctta.data.digits import TensorImageDataset

K = 4  # classes


def _vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8,
                             depth=1, embed_dim=24, num_heads=3).eval()  # fmt: skip


def _lam(seed: int, alpha: float = 0.8) -> float:
    """timm's batch-mode draw order with prob 1 and cutmix off: ``rand()`` (mix or not), then ``beta``."""
    rng = np.random.RandomState(seed)
    rng.rand()
    return float(rng.beta(alpha, alpha))


def _smooth(y: list[int], eps: float) -> torch.Tensor:
    return torch.tensor([[1 - eps + eps / K if c == t else eps / K for c in range(K)] for t in y])


def test_mixup_and_soft_target_ce_match_a_hand_computation():
    cfg = TCPAConfig(mixup_prob=1.0)  # always mix (official 0.5), alpha 0.8, label smoothing 0.1
    x, y = torch.arange(4 * 3 * 2 * 2, dtype=torch.float32).view(4, 3, 2, 2), torch.tensor([0, 2, 3, 1])
    np.random.seed(7)
    (xm, ym), soft = mix_batch(make_mixup(cfg, K), [x, y])
    lam = _lam(7)
    torch.testing.assert_close(xm, lam * x + (1 - lam) * x.flip(0))
    assert ym.tolist() == [0, 2, 3, 1]  # the integer labels stay as they were
    want_soft = lam * _smooth([0, 2, 3, 1], 0.1) + (1 - lam) * _smooth([1, 3, 2, 0], 0.1)
    torch.testing.assert_close(soft, want_soft)
    logits = torch.tensor([[1.0, 0.0, -1.0, 2.0], [0.5, 0.5, 0.0, 0.0], [3.0, 1.0, 0.0, -2.0], [0.0, 0.0, 0.0, 1.0]])
    hand = 0.0
    for b in range(4):  # -sum_c q_c log softmax(z)_c, averaged over the batch
        z = logits[b].tolist()
        log_norm = math.log(sum(math.exp(v) for v in z))
        hand += -sum(float(want_soft[b, c]) * (z[c] - log_norm) for c in range(K)) / 4
    stub = SimpleNamespace(is_training=True, _mixup=object(), _soft_targets=soft, mb_output=logits, mb_y=ym,
                           cfg=cfg, model=SimpleNamespace(key_loss=torch.tensor(0.25)))  # fmt: skip
    torch.testing.assert_close(TCPA.criterion(stub), torch.tensor(hand + 0.25), atol=1e-6, rtol=1e-6)


def test_odd_batch_drops_its_last_sample_and_a_single_sample_is_kept():
    mixup = make_mixup(TCPAConfig(), K)
    x, y, t = torch.randn(5, 3, 2, 2), torch.tensor([0, 1, 2, 3, 0]), torch.zeros(5, dtype=torch.long)
    (xm, ym, tm), soft = mix_batch(mixup, [x, y, t])
    assert xm.shape[0] == ym.shape[0] == tm.shape[0] == soft.shape[0] == 4 and ym.tolist() == [0, 1, 2, 3]
    (x1, y1), soft1 = mix_batch(mixup, [x[:1], y[:1]])
    assert torch.equal(x1, x[:1])
    torch.testing.assert_close(soft1, _smooth([0], 0.1))


def test_mixup_off_is_plain_cross_entropy():
    assert make_mixup(TCPAConfig(mixup=False), K) is None
    logits, y = torch.randn(3, K), torch.tensor([2, 0, 1])
    hand = -logits.log_softmax(-1)[torch.arange(3), y].mean()
    for eps in (0.0, 0.1):  # the official scripts without --mixup: nn.CrossEntropyLoss(), no smoothing
        stub = SimpleNamespace(is_training=True, _mixup=None, mb_output=logits, mb_y=y,
                               cfg=TCPAConfig(mixup=False, label_smoothing=eps), model=SimpleNamespace(key_loss=0.5))
        torch.testing.assert_close(TCPA.criterion(stub), hand + 0.5)
    stub.is_training = False  # evaluation: plain CE, no key loss, whatever the switches
    stub.cfg, stub._mixup = TCPAConfig(), object()
    torch.testing.assert_close(TCPA.criterion(stub), F.cross_entropy(logits, y))


def test_pixel_prompter_shape_and_trainable_only_with_iprompt():
    p = PixelPrompter()
    x = torch.randn(2, 3, 32, 32)
    assert p(x).shape == x.shape
    assert [tuple(m.weight.shape) for m in p.net if isinstance(m, torch.nn.Conv2d)] == [(9, 3, 11, 11), (3, 9, 11, 11)]
    with torch.no_grad():
        for m in p.net:
            if isinstance(m, torch.nn.Conv2d):
                m.weight.zero_(), m.bias.zero_()
    torch.testing.assert_close(p(x), x)  # x + net(x)
    base = dict(pool_size_cls=2, pool_size_image=2, top_k=1, prompt_dropout=0.0)
    plain, with_p = TCPAModel(_vit(), K, TCPAConfig(**base)), TCPAModel(_vit(), K, TCPAConfig(**base, iprompt=True))
    assert plain.prompter is None and not any(n.startswith("prompter") for n, _ in plain.named_parameters())
    names = {n for n, q in with_p.named_parameters() if q.requires_grad}
    assert {"prompter.net.0.weight", "prompter.net.1.weight", "prompter.net.2.weight"} <= names
    with_p(x).sum().backward()
    assert with_p.prompter.net[0].weight.grad.abs().sum() > 0


def _tiny(n: int = 5):
    g = torch.Generator().manual_seed(0)
    ds = TensorImageDataset(torch.rand(n, 3, 32, 32, generator=g), [i % K for i in range(n)])
    return ds, class_incremental_benchmark(ds, ds, [list(range(K))])


def _strategy(**kw):
    base = dict(num_classes=K, epochs=1, batch_size=5, eval_batch_size=5, pool_size_cls=2, pool_size_image=2, top_k=1,
                random_epochs=0, device="cpu")  # fmt: skip
    return TCPA(model=_vit(), **(base | kw))


@pytest.mark.parametrize("mixup", [True, False])
def test_default_strategy_trains_on_mixed_even_batches(mixup):
    ds, bench = _tiny()
    strategy = _strategy(mixup=mixup, mixup_prob=1.0)
    seen = []
    strategy.model.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))
    np.random.seed(3)
    strategy.train(bench.train_stream[0])
    x = seen[0]  # the loader shuffles: undo the mix x' = lam s + (1 - lam) flip(s), then match the originals
    if mixup:  # the official default: the odd batch keeps 4 samples, mixed with their flipped order
        lam = _lam(3)
        assert x.shape[0] == 4
        x = (lam * x - (1 - lam) * x.flip(0)) / (2 * lam - 1)
    dist = (x.flatten(1)[:, None] - ds.images.flatten(1)[None]).abs().amax(-1)  # (rows, 5)
    assert dist.amin(1).max() < 1e-4 and len(set(dist.argmin(1).tolist())) == x.shape[0]


def test_reference_best_test_epoch_is_labelled_off_by_default_and_leaves_training_unchanged():
    ds, bench = _tiny(8)
    assert TCPA.extra_metrics(TCPAConfig()) == () and "reference_test" not in TCPA.benchmark_kwargs(TCPAConfig(), bench)
    assert TCPA.benchmark_kwargs(TCPAConfig(reference_best_test_epoch=True), bench)["reference_test"] is not None
    states = []
    for on in (False, True):
        torch.manual_seed(0), np.random.seed(0)
        metric = ReferenceBestTestEpoch()
        kw = dict(reference_best_test_epoch=True, reference_test=ds, plugins=[metric]) if on else {}
        strategy = _strategy(epochs=3, batch_size=4, lr=0.05, **kw)
        strategy.train(bench.train_stream[0])
        states.append({k: v.clone() for k, v in strategy.model.state_dict().items()})
    for k, v in states[0].items():
        assert torch.equal(v, states[1][k]), k  # evaluating the test set each epoch does not change training
    accs = strategy.reference_epoch_top1
    assert len(accs) == 3 and accs[-1] == dataset_top1(strategy.model, ds, 8, "cpu")
    assert metric.result() == max(accs) and metric.summary_name() == "reference_best_test_epoch_top1"


def test_official_config_uses_the_official_pieces():
    from ctta.runner.config import load_config
    from tests.helpers import ROOT

    for name in ("cub200", "stanford-dogs", "svhn"):
        cfg = load_config(ROOT / "configs/tcpa.yaml", [f"scenario.dataset={name}"])
        st, sc = cfg.strategy.params, cfg.scenario.params
        assert st.mixup and st.label_smoothing == 0.1 and not st.reference_best_test_epoch
        assert st.iprompt == (name == "cub200")  # --IPrompt only in the CUB script
        assert (sc.normalize, sc.transform) == ("imagenet", "damvp")
