"""MULTI-LANE: parameter counts, frozen stream, lane equations, concat == per-lane, isolation, losses (spec §12)."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from avalanche.benchmarks.scenarios import DatasetExperience
from avalanche.benchmarks.scenarios.generic_scenario import EagerCLStream
from avalanche.training.plugins import EvaluationPlugin, SupervisedPlugin
from ctta.scenarios.multilabel import MultiLabelConfig, build_multilabel
from ctta.strategies.multilane import (
    MultiLane,
    MultiLaneConfig,
    MultiLaneModel,
    cls_attention,
    masked_bce,
    masked_ce,
    tome_merge,
)
from ctta.strategies.multilane.metrics import multilane_metrics

from ctta.backbones.vit import PromptedViT
from ctta.registry import STRATEGIES


def _model(tiny_vit, tasks=((0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11)), start=True, **kw):
    torch.manual_seed(1)
    kw = {"num_selectors": 4, "num_prompts": 3, "num_prompt_layers": 2, **kw}
    m = MultiLaneModel(tiny_vit, 12, len(tasks), **kw)
    with torch.no_grad():  # make lanes and head rows distinct (copy-previous-lane makes them equal)
        m.head.weight.normal_()
        m.head.bias.normal_()
    if start:
        for t, c in enumerate(tasks):
            m.start_task(t, c)
        with torch.no_grad():
            for p in m.parameters():
                if p.requires_grad:
                    p.add_(0.1 * torch.randn_like(p))
    return m.eval()


def _x(n=3, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("tasks", "classes", "s", "p", "lp", "want"),
    [(8, 80, 20, 20, 5, 1_413_200), (5, 20, 10, 10, 5, 437_780), (10, 100, 20, 20, 5, 1_766_500),
     (10, 200, 20, 20, 12, 3_993_800)],
)  # fmt: skip
def test_parameter_counts_follow_the_formula(tasks, classes, s, p, lp, want):
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, device="meta")
    m = MultiLaneModel(vit, classes, tasks, num_selectors=s, num_prompts=p, num_prompt_layers=lp)
    d = 768
    assert tasks * s * d + lp * 2 * tasks * p * d + d * classes + classes == want
    assert sum(q.numel() for q in m.parameters() if q.requires_grad) == want
    flat = m.selectors.detach().flatten(1)  # (T, S*D): orthonormal rows
    assert torch.allclose(flat @ flat.T, torch.eye(tasks), atol=1e-5)


def test_frozen_stream_is_timm_forward_bit_for_bit(tiny_vit):
    m = _model(tiny_vit)
    x = _x()
    _, frozen = m.lane_features(x, [0, 1])
    assert torch.equal(frozen, tiny_vit.vit.forward_features(x))


def _reference_lane(m, x, t):
    """Straight transcription of spec §3.2 for one lane, one image at a time, explicit attention."""
    vit = m.backbone.vit
    out = []
    for b in range(x.shape[0]):
        z = m.backbone.embed(x[b : b + 1])[0]  # (N, D)
        u = torch.cat([vit.cls_token[0], m.selectors[t]])  # (1+S, D)
        for i, blk in enumerate(vit.blocks):
            zh, uh = blk.norm1(z), blk.norm1(u)
            a = torch.softmax(uh[1:] @ zh.T / math.sqrt(zh.shape[1]), -1)  # (S, N)
            h = torch.cat([uh[:1], a @ zh])
            heads = blk.attn.num_heads
            q, k, v = blk.attn.qkv(h).reshape(len(h), 3, heads, -1).permute(1, 2, 0, 3)  # (H, n, hd) each
            if i < len(m.prompts):
                k = torch.cat([m.prompts[i][0, t].transpose(0, 1), k], 1)
                v = torch.cat([m.prompts[i][1, t].transpose(0, 1), v], 1)
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)
            o = blk.attn.proj((att @ v).transpose(0, 1).reshape(len(h), -1))
            u = torch.cat([u[:1] + o[:1], u[1:] + uh[1:]])
            u = u + blk.mlp(blk.norm2(u))
            z = blk(z[None])[0]
        out.append(F.normalize(vit.norm(u[0]), dim=-1))
    return torch.stack(out)


def test_lane_equations_match_a_direct_transcription(tiny_vit):
    m = _model(tiny_vit)
    x = _x(2)
    with torch.no_grad():
        feats, _ = m.lane_features(x, [0, 2])
        for pos, t in enumerate((0, 2)):
            assert torch.allclose(feats[pos], _reference_lane(m, x, t), atol=1e-5)


def test_concat_inference_equals_per_lane_loop_and_training_forward(tiny_vit):
    m = _model(tiny_vit)
    x = _x(4)
    with torch.no_grad():
        out = m(x)
        manual = torch.empty(4, 12)
        for t in range(3):
            logits_t, _ = m.forward_train(x, t)  # single-lane training forward
            cols = (m.class_task == t).nonzero().flatten()
            manual[:, cols] = logits_t[:, cols]
        assert torch.allclose(out, manual, atol=1e-5)
        feats, _ = m.lane_features(x, [0, 1, 2])
        assert torch.allclose(feats[1], m.lane_features(x, [1])[0][0], atol=1e-6)


@pytest.mark.parametrize("opts", [{}, {"summarizer": "tome", "tome_k": 6}])
def test_cls_only_attention_fast_path_equals_full_attention(tiny_vit, opts):
    from ctta.backbones.vit import _attention

    blk = tiny_vit.vit.blocks[0]
    h, pk, pv = torch.randn(5, 7, 48), torch.randn(5, 3, 48), torch.randn(5, 3, 48)
    assert torch.allclose(cls_attention(blk, h, (pk, pv)), _attention(blk, h, (pk, pv))[:, :1], atol=1e-6)
    assert torch.allclose(cls_attention(blk, h), _attention(blk, h)[:, :1], atol=1e-6)
    m = _model(tiny_vit, **opts)
    x = _x(3)
    with torch.no_grad():
        fast = m(x)
        m.fast_cls_attention = False
        assert torch.allclose(fast, m(x), atol=1e-5)


def test_untrained_classes_get_minus_inf_and_copy_previous_lane(tiny_vit):
    m = _model(tiny_vit, start=False)
    assert torch.isinf(m(_x(1))).all()
    m.start_task(0, [0, 1, 2, 3])
    with torch.no_grad():
        m.selectors[0].add_(1.0)
        m.prompts[1][:, 0].add_(1.0)
    m.start_task(1, [4, 5, 6, 7])
    assert torch.equal(m.selectors[1], m.selectors[0]) and torch.equal(m.prompts[1][:, 1], m.prompts[1][:, 0])
    assert not torch.equal(m.selectors[2], m.selectors[1])
    out = m(_x(2))
    assert torch.isinf(out[:, 8:]).all() and torch.isfinite(out[:, :8]).all()
    with pytest.raises(ValueError, match="already owned"):
        m.start_task(2, [7, 8])
    with pytest.raises(ValueError, match="allocated lanes"):
        m.start_task(3, [9])


def test_past_lanes_and_rows_get_exactly_zero_gradient(tiny_vit):
    m = _model(tiny_vit)
    logits, _ = m.forward_train(_x(), 1)
    y = (torch.rand(3, 12) > 0.5).float()
    masked_bce(logits, y, m.class_task == 1).backward()
    assert m.selectors.grad[0].abs().sum() == 0 and m.selectors.grad[2].abs().sum() == 0
    assert m.selectors.grad[1].abs().sum() > 0
    assert all(p.grad[:, [0, 2]].abs().sum() == 0 and p.grad[:, 1].abs().sum() > 0 for p in m.prompts)
    rows = (m.class_task != 1).nonzero().flatten()
    assert m.head.weight.grad[rows].abs().sum() == 0 and m.head.bias.grad[rows].abs().sum() == 0


def test_masked_bce_log2_and_gradient_scale():
    torch.manual_seed(0)
    logits = torch.randn(5, 8, requires_grad=True)
    y = (torch.rand(5, 8) > 0.5).float()
    mask = torch.tensor([0, 0, 1, 1, 0, 0, 0, 0], dtype=torch.bool)
    full = masked_bce(logits, y, mask)
    inside = F.binary_cross_entropy_with_logits(logits[:, mask], y[:, mask], reduction="sum")
    assert full.item() == pytest.approx((inside.item() + 5 * 6 * math.log(2)) / 40, rel=1e-6)
    (g_mean,) = torch.autograd.grad(full, logits)
    (g_task,) = torch.autograd.grad(masked_bce(logits, y, mask, "task_columns"), logits)
    assert torch.allclose(g_mean, g_task * 2 / 8) and g_mean[:, ~mask].abs().sum() == 0
    with pytest.raises(ValueError, match="bce_reduction"):
        masked_bce(logits, y, mask, "sum")
    ce = masked_ce(torch.zeros(2, 8), torch.tensor([2, 3]), mask)
    assert ce.item() == pytest.approx(math.log(2))


def test_tome_merge_protects_cls_and_averages():
    torch.manual_seed(0)
    x = torch.randn(2, 17, 8)
    out = tome_merge(x, 5)
    assert out.shape == (2, 5, 8) and torch.equal(out[:, 0], x[:, 0])  # 17 -> 9 -> 5
    y = torch.tensor([[[1.0, 0], [0, 1], [1, 0.1], [0, 1]]])  # token 2 merges into its best match (token 1 or 3)
    merged = tome_merge(y, 3)
    assert merged.shape == (1, 3, 2) and torch.equal(merged[0, 0], y[0, 0])
    assert torch.allclose(merged.sum(1), torch.tensor([[1.0, 0]]) + y[0, 1] + (y[0, 2] + y[0, 3]) / 2)


@pytest.mark.parametrize(
    "opts", [{"drop_and_replace": False}, {"summarizer": "tome", "tome_k": 6}, {"head_mode": "task"},
             {"pre_head_normalize": False, "normalize_input": True}],
)  # fmt: skip
def test_ablation_options_concat_and_lane_consistency(tiny_vit, opts):
    m = _model(tiny_vit, **opts)
    x = _x(3)
    with torch.no_grad():
        out = m(x)
        assert out.shape == (3, 12) and torch.isfinite(out).all()
        feats, frozen = m.lane_features(x, [0, 1, 2])
        assert torch.allclose(feats[2], m.lane_features(x, [2])[0][0], atol=1e-5)
        if opts.get("head_mode") == "task":
            q = F.normalize(frozen[:, 0], dim=-1) @ F.normalize(m.keys, dim=-1).T
            want = m.head(feats)[q.argmax(-1), torch.arange(3)]
            assert torch.allclose(out, want, atol=1e-6)
            assert m.forward_train(x, 1)[1].item() == pytest.approx(-q[:, 1].mean().item(), abs=1e-6)


class _LR(SupervisedPlugin):
    def __init__(self):
        super().__init__()
        self.lrs = []

    def before_training_epoch(self, strategy, **kw):
        self.lrs.append(strategy.optimizer.param_groups[0]["lr"])


def _bench():
    cfg = MultiLabelConfig(increment=4, img_size=32, synthetic_train=24, synthetic_test=12)
    return build_multilabel(cfg, seed=0)


def test_strategy_isolation_schedule_and_metrics(tiny_vit):
    bench = _bench()
    cfg = MultiLaneConfig(num_selectors=4, num_prompts=3, num_prompt_layers=2, epochs=3, batch_size=8, lr=0.05)
    lr = _LR()
    ev = EvaluationPlugin(*multilane_metrics(), loggers=[])
    torch.manual_seed(0)
    s = STRATEGIES.get("multilane").builder.from_config(
        cfg, backbone=tiny_vit, benchmark=bench, device="cpu", evaluator=ev, plugins=[lr], precision="fp32"
    )
    backbone = {k: v.clone() for k, v in tiny_vit.state_dict().items()}
    s.train(bench.train_stream[0])
    snap = {n: p.detach().clone() for n, p in s.model.named_parameters() if p.requires_grad}
    s.train(bench.train_stream[1])
    m = s.model
    assert torch.equal(m.selectors[0], snap["selectors"][0]) and not torch.equal(m.selectors[1], snap["selectors"][1])
    assert all(torch.equal(p[:, 0], snap[f"prompts.{i}"][:, 0]) for i, p in enumerate(m.prompts))
    c0 = list(bench.info.task_classes[0])
    assert torch.equal(m.head.weight[c0], snap["head.weight"][c0])
    assert torch.equal(m.head.bias[c0], snap["head.bias"][c0])
    assert torch.equal(m.selectors[2], snap["selectors"][2])  # future lane untouched
    assert all(torch.equal(v, backbone[k]) for k, v in tiny_vit.state_dict().items())
    want = [0.05 * (1 + math.cos(math.pi * k / 3)) / 2 for k in range(3)]
    assert lr.lrs == pytest.approx(want * 2)  # fresh Adam + cosine per task, stepped per epoch
    res = s.eval_after_experience(bench, 1)
    assert 0 <= res["mAP/eval_phase/test_stream/Exp001"] <= 1 and "amAP/eval_phase/test_stream/Exp001" in res


def test_single_label_ce_and_bad_experience(tiny_vit, digits):
    from ctta.scenarios.class_incremental import class_incremental_benchmark

    train, test = digits
    idx = list(range(60))
    sub = torch.utils.data.Subset(train, idx)
    sub.targets = [train.targets[i] for i in idx]
    bench = class_incremental_benchmark(sub, sub, [list(range(5)), list(range(5, 10))])
    m = MultiLaneModel(tiny_vit, 10, 2, num_selectors=2, num_prompts=2, num_prompt_layers=1)
    s = MultiLane(model=m, lr=0.05, train_mb_size=16, train_epochs=1, eval_mb_size=32,
                  evaluator=EvaluationPlugin(*multilane_metrics(), loggers=[]), precision="fp32")  # fmt: skip
    s.train(bench.train_stream[0])
    assert math.isfinite(float(s.loss))
    res = s.eval_after_experience(bench, 0)
    assert 0 <= res["Top1_Acc_TaskAvg/eval_phase/test_stream"] <= 1
    bare = EagerCLStream("train", [DatasetExperience(dataset=bench.train_stream[1].dataset)])[0]
    with pytest.raises(ValueError, match="classes_in_this_experience"):
        s.train(bare)


def test_bad_options_raise(tiny_vit):
    with pytest.raises(ValueError, match="summarizer"):
        MultiLaneModel(tiny_vit, 4, 2, summarizer="pool")
    with pytest.raises(ValueError, match="head_mode"):
        MultiLaneModel(tiny_vit, 4, 2, head_mode="sum")
    with pytest.raises(ValueError, match="num_prompt_layers"):
        MultiLaneModel(tiny_vit, 4, 2, num_prompt_layers=7)
    with pytest.raises(ValueError, match="bce_reduction"):
        MultiLane(model=MultiLaneModel(tiny_vit, 4, 2), bce_reduction="sum")
    assert isinstance(MultiLaneModel(tiny_vit.vit, 4, 1).backbone, PromptedViT)


@pytest.mark.parametrize(
    ("name", "want"),
    [("coco_b0c10", (0, 10, 20, 5, 128, 0.015)), ("coco_b40c10", (40, 10, 20, 5, 128, 0.015)),
     ("voc_b0c4", (0, 4, 10, 5, 256, 0.05)), ("voc_b10c2", (10, 2, 10, 5, 256, 0.05)),
     ("cifar100", (None, 10, 20, 5, 1024, 0.04)), ("imagenet_r", (None, 10, 20, 12, 1024, 0.04))],
)  # fmt: skip
def test_benchmark_configs_hold_the_reference_defaults(name, want):
    from ctta.runner.config import load_config
    from tests.helpers import ROOT

    cfg = load_config(ROOT / "configs" / f"multilane_{name}.yaml")
    sc, st = cfg.scenario.params, cfg.strategy.params
    split = (sc.base_classes, sc.increment) if cfg.scenario.name == "multilabel" else (None, sc.n_experiences)
    assert (*split, st.num_selectors, st.num_prompt_layers, st.batch_size, st.lr) == want
    assert cfg.backbone.params.model == "vit_base_patch16_224.augreg_in21k_ft_in1k"
    assert st.pre_head_normalize and not st.normalize_input and st.head_mode == "concat"
    assert st.epochs == (30 if cfg.scenario.name == "multilabel" else 50)
