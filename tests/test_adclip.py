"""AD-CLIP (strategies/adclip.py): the AdaIN statistics, the three projectors and the losses on hand-made tensors,
and the model's shapes on the tiny random CLIP."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from ctta.strategies.adclip import (
    ADCLIPConfig,
    ADCLIPModel,
    DomainProjector,
    ImageProjector,
    StyleMappingProjector,
    adain_stats,
    adclip_entropy,
    text_kl,
)
from torch import nn


def _identity(linear: nn.Linear) -> None:
    with torch.no_grad():
        linear.weight.copy_(torch.eye(*linear.weight.shape))
        linear.bias.zero_()


def test_adain_statistics_by_hand():
    x = torch.tensor([[[1.0, 3.0], [3.0, 5.0]]])  # one image, two tokens, width 2
    mu, sigma = adain_stats(x)
    assert mu.tolist() == [[2.0, 4.0]]
    assert sigma[0].tolist() == pytest.approx([math.sqrt((2 + 2.3e-8) / 2)] * 2)


def test_domain_tokens_average_mean_and_std_per_layer():
    proj = DomainProjector(layers=2, width=2, hidden=2, dim=2)
    for lin in (*proj.down, *proj.up):
        _identity(lin)
    a = torch.tensor([[[1.0, 3.0], [3.0, 5.0]]])  # mu (2, 4), sigma (1, 1)
    b = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])  # mu 0, sigma ~0
    out = proj([a, b])
    assert out.shape == (1, 2, 2)
    assert out[0, 0].tolist() == pytest.approx([1.5, 2.5], abs=1e-6)
    assert out[0, 1].tolist() == pytest.approx([0.0, 0.0], abs=1e-3)


def test_image_tokens_mix_layers_and_the_shared_head_repeats_one_token():
    x1, x2 = torch.ones(2, 3, 4), 3 * torch.ones(2, 3, 4)  # token means 1 and 3
    shared = ImageProjector(layers=2, width=4, dim=4, n_tokens=3)
    for lin in shared.proj:
        _identity(lin)
    with torch.no_grad():
        shared.heads[0].weight.copy_(torch.tensor([[0.25, 0.75]]))
        shared.heads[0].bias.zero_()
    out = shared([x1, x2])
    assert out.shape == (2, 3, 4)
    assert torch.allclose(out, torch.full((2, 3, 4), 0.25 * 1 + 0.75 * 3))  # the reference's identical tokens
    separate = ImageProjector(layers=2, width=4, dim=4, n_tokens=3, shared_head=False)
    tokens = separate([x1, x2])
    assert len(separate.heads) == 3 and not torch.allclose(tokens[:, 0], tokens[:, 1])


def test_style_mapping_pools_mean_and_std_in_pairs_like_adaptive_avg_pool():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 5, 4, generator=g)
    proj = StyleMappingProjector(layers=1, width=4, hidden=4, dim=4)
    for lin in (*proj.down, *proj.up):
        _identity(lin)
    mu, sigma = adain_stats(x)
    want = nn.AdaptiveAvgPool1d(4)(torch.cat([mu, sigma], 1))  # the reference's pooling (2W -> W)
    assert torch.allclose(proj([x])[:, 0], F.relu(want), atol=1e-6)
    assert want[0, 0].item() == pytest.approx((mu[0, 0] + mu[0, 1]).item() / 2)


def test_entropy_normalises_over_the_batch_first():
    probs = torch.tensor([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]])
    p = probs / probs.norm(dim=0, keepdim=True)
    rows = [-sum(p[i, j].item() * math.log(p[i, j].item() + 1e-8) for j in range(2)) for i in range(3)]
    assert adclip_entropy(probs).item() == pytest.approx(sum(rows) / 3, rel=1e-6)


def test_text_kl_runs_over_the_class_axis():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    ps, pt = F.log_softmax(s, dim=1), F.softmax(t, dim=1)
    want = sum(pt[b, c, e] * (math.log(pt[b, c, e]) - ps[b, c, e]) for b in range(2) for c in range(3)
               for e in range(4)) / 2  # fmt: skip
    assert text_kl(s, t).item() == pytest.approx(float(want), rel=1e-5)


def test_model_shapes_and_source_free_inference(tiny):
    model, tok = tiny
    m = ADCLIPModel(model, tok, ["zero", "one", "two"], ADCLIPConfig(n_img_ctx=2, domain_hidden=8, style_hidden=8))
    layers = len(model.visual.transformer.resblocks)
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    f, taps = m.encode(x)
    assert len(taps) == layers and taps[0].shape[0] == 2 and not taps[0].requires_grad
    out = m.forward_pair(x, y)
    d = m.text.layout[0] if isinstance(m.text.layout[0], int) else None
    assert d == 2 * layers + 2
    assert out["source_logits"].shape == (2, 3) and out["source_domain"].shape == out["source_style"].shape
    assert torch.allclose(out["target_probs"].sum(-1), torch.ones(2))
    logits = m(x)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    trainable = {n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"domain", "image", "style"}
