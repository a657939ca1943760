"""LAPT's cross-sample mixing ablations (``mix: mixup | manimix | geomix``): partner pairing, each mix and the mixed
soft label against their closed forms on hand-made inputs, and training runs where the mixed samples pair ID with
negative-label images (cross-distribution) and the loss is clean CE + soft CE of the mixed logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from ctta.strategies import lapt
from ctta.strategies.lapt import geomix, manimix, mixed_soft_labels, mixup_pairs

from ctta.clip_prompting.vision import encode_image
from tests.helpers import SMOKE, save_rgb


def test_mixup_pairs_reverses_the_batch_when_no_pair_shares_a_label():
    assert mixup_pairs(torch.tensor([0, 1, 2, 3])).tolist() == [3, 2, 1, 0]


def test_mixup_pairs_repairs_same_label_pairs():
    torch.manual_seed(0)
    y = torch.tensor([0, 1, 5, 0, 0])  # reversed: 0<->4 share label 0, 2 pairs with itself
    index = mixup_pairs(y)
    assert (y != y[index]).all()


def test_mixup_pairs_terminates_on_a_single_label_batch():
    assert len(mixup_pairs(torch.tensor([2, 2, 2]), max_rounds=3)) == 3


def test_manimix_is_the_normalised_linear_mix():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = manimix(f, torch.tensor([1, 0]), 0.25)
    assert torch.allclose(out, torch.tensor([[0.25, 0.75], [0.75, 0.25]]) / math.sqrt(0.25**2 + 0.75**2))


def test_geomix_is_the_official_slerp_on_orthogonal_vectors():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = geomix(f, torch.tensor([1, 0]), 1 / 3)  # theta = pi/2: sin(pi/6) a + sin(pi/3) b
    assert torch.allclose(out, torch.tensor([[0.5, math.sqrt(3) / 2], [math.sqrt(3) / 2, 0.5]]), atol=1e-6)
    assert torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-6)  # stays on the sphere
    assert torch.allclose(geomix(f, torch.tensor([1, 0]), 1.0), f, atol=1e-6)  # lam = 1 keeps the sample


def test_geomix_at_a_general_angle_and_for_identical_features():
    a = torch.tensor([1.0, 0.0])
    b = torch.tensor([math.cos(1.0), math.sin(1.0)])  # angle 1 rad
    out = geomix(torch.stack([a, b]), torch.tensor([1, 0]), 0.3)[0]
    expected = (math.sin(0.3) * a + math.sin(0.7) * b) / math.sin(1.0)
    assert torch.allclose(out, expected, atol=1e-5)
    same = torch.tensor([[0.6, 0.8], [0.6, 0.8]])  # angle 0: no NaN (the official code divides by zero)
    assert torch.allclose(geomix(same, torch.tensor([1, 0]), 0.4), same, atol=1e-6)


def test_mixed_soft_labels():
    soft = mixed_soft_labels(torch.tensor([0, 3]), torch.tensor([1, 0]), 0.25, 4)
    assert torch.allclose(soft, torch.tensor([[0.25, 0.0, 0.0, 0.75], [0.75, 0.0, 0.0, 0.25]]))


class _MixCheck(SupervisedPlugin):
    """After each training forward, recomputes the mixed logits and the loss from their closed forms."""

    def __init__(self, mix: str, indices: list) -> None:
        super().__init__()
        self.mix, self.indices, self.steps, self.cross = mix, indices, 0, 0

    def after_forward(self, strategy, **kwargs) -> None:
        y, index = strategy.mb_y, self.indices[-1]
        mixed_logits, soft = strategy._mixed
        lam = float(soft[0, y[0]])
        assert torch.allclose(soft, mixed_soft_labels(y, index, lam, soft.shape[1]))
        model = strategy.model
        g = F.normalize(model.training_text_features().float(), dim=-1)
        if self.mix == "mixup":  # the mixed images, encoded
            x = strategy.mb_x
            mixed = F.normalize(encode_image(model.clip, lam * x + (1 - lam) * x[index]), dim=-1)
        else:
            f = F.normalize(encode_image(model.clip, strategy.mb_x).float(), dim=-1)
            mixed = (manimix if self.mix == "manimix" else geomix)(f, index, lam)
        scale = model.logit_scale.float()
        assert torch.allclose(mixed_logits, scale * mixed @ g.t(), atol=1e-4)
        n_id = len(model.classnames)
        self.cross += int(((y < n_id) & (y[index] >= n_id)).sum())  # ID x negative-label pairs
        self.steps += 1

    def after_backward(self, strategy, **kwargs) -> None:
        expected = F.cross_entropy(strategy.mb_output, strategy.mb_y) + F.cross_entropy(*strategy._mixed)
        assert torch.allclose(strategy.loss, expected)


@pytest.mark.parametrize("mix", ["mixup", "manimix", "geomix"])
def test_lapt_trains_with_cross_distribution_mixing(tmp_path, monkeypatch, mix):
    from ctta.runner.config import load_config
    from ctta.runner.run import execute, prepare

    indices: list = []

    def recording_pairs(y, max_rounds=100):
        indices.append(mixup_pairs(y, max_rounds))
        return indices[-1]

    monkeypatch.setattr(lapt, "mixup_pairs", recording_pairs)
    for word in ("shirt", "coat", "bag", "boot", "tree", "cloud", "river", "red", "small", "dark"):
        save_rgb(tmp_path / "neg" / word / "0.png", colour=(200, 100, 20))
    cfg = load_config(SMOKE / "lapt_digits_ood.yaml", [f"log.out_dir={tmp_path / 'run'}", "log.progress=false",
                                                        "device=cpu", f"strategy.negative_images={tmp_path / 'neg'}",
                                                        "strategy.epochs=1", f"strategy.mix={mix}"])  # fmt: skip
    ctx = prepare(cfg)
    check = _MixCheck(mix, indices)
    ctx.strategy.plugins.append(check)
    execute(ctx, verbose=False)
    assert check.steps == len(indices) > 0
    assert check.cross > 0  # ID images were mixed with negative-label images


def test_wccm_is_the_default():
    assert lapt.LAPTConfig().mix == "wccm"
