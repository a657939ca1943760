"""PromptSRC: consistency losses against their closed forms, the teacher, Gaussian prompt aggregation after
training, independent deep prompts."""

from __future__ import annotations

import math

import pytest
import torch
from ctta.strategies.promptsrc import (
    PROMPTSRC_TEMPLATES,
    PromptSRC,
    PromptSRCConfig,
    PromptSRCModel,
    gaussian_epoch_weights,
    promptsrc_consistency,
)

from ctta.losses import kl_to_teacher, l1_feature_loss

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def test_losses_closed_form():
    f = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    t = torch.tensor([[0.0, 2.0], [0.0, 1.0]])
    # normalised: f -> [[.6, .8], [1, 0]], t -> [[0, 1], [0, 1]]; |diff| = .6 .2 1 1 -> mean 0.7
    assert l1_feature_loss(f, t).item() == pytest.approx(0.7)
    z, zt = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[0.0, 0.0]])
    p, q = [0.25, 0.75], [0.5, 0.5]  # student, teacher
    kl = sum(qi * math.log(qi / pi) for pi, qi in zip(p, q)) / 2  # summed, divided by numel = 2
    assert kl_to_teacher(z, zt).item() == pytest.approx(kl)
    total = promptsrc_consistency(f, t, f, t, z, zt, text_weight=25, image_weight=10)
    assert total.item() == pytest.approx(kl + 25 * 0.7 + 10 * 0.7)


def test_templates_and_teacher(tiny):
    assert len(PROMPTSRC_TEMPLATES) == 60 and len(set(PROMPTSRC_TEMPLATES)) == 60
    model, tok = tiny
    m = PromptSRCModel(model, tok, NAMES[:3], PromptSRCConfig(depth_text=2, depth_vision=2))
    with torch.no_grad():
        one = model.encode_text(tok([PROMPTSRC_TEMPLATES[7].format(n) for n in NAMES[:3]]))
    assert m.teacher.text_features.shape == one.shape
    m.set_classnames(NAMES[3:5])
    assert m.teacher.text_features.shape[0] == 2 and m.text.n_classes == 2


def test_prompts_are_independent_and_trainable(tiny):
    model, tok = tiny
    m = PromptSRCModel(model, tok, NAMES[:3], PromptSRCConfig(depth_text=2, depth_vision=2))
    assert {n for n, p in m.named_parameters() if p.requires_grad} == {
        "ctx", "deep_text.0", "vpt", "deep_vision.0"
    }  # fmt: skip
    m.train()
    m(torch.randn(2, 3, 32, 32)).logsumexp(-1).sum().backward()
    assert set(m.features) == {"text", "image"}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters() if p.requires_grad)


class _Recording(PromptSRC):
    def epoch_end(self) -> None:
        self.snapshots = [*getattr(self, "snapshots", []), {n: p.detach().clone() for n, p in self.gpa.params.items()}]
        super().epoch_end()


def test_training_loss_and_gaussian_aggregation(tiny):
    from avalanche.benchmarks.scenarios import CLScenario, DatasetExperience
    from avalanche.benchmarks.scenarios.generic_scenario import EagerCLStream
    from avalanche.benchmarks.utils import DataAttribute
    from avalanche.benchmarks.utils.classification_dataset import ClassificationDataset
    from avalanche.training.plugins import EvaluationPlugin

    model, tok = tiny
    x, y = torch.randn(12, 3, 32, 32), torch.arange(12) % 10
    ds = ClassificationDataset(
        [torch.utils.data.TensorDataset(x, y)], data_attributes=[DataAttribute(y.tolist(), "targets")]
    )
    bench = CLScenario([EagerCLStream("train", [DatasetExperience(dataset=ds, current_experience=0)])])
    strategy = _Recording(
        model=model, tokenizer=tok, classnames=NAMES, depth_text=2, depth_vision=2, epochs=3, batch_size=4,
        lr=0.05, prec="fp32", gpa_mean=2.0, gpa_std=1.0, evaluator=EvaluationPlugin(loggers=[]),
    )  # fmt: skip
    strategy.train(bench.train_stream[0])
    w = gaussian_epoch_weights(3, 2.0, 1.0)
    for name, p in strategy.gpa.params.items():
        want = sum(wi * s[name].double() for wi, s in zip(w, strategy.snapshots))
        torch.testing.assert_close(p.detach().double(), want)
    assert not torch.equal(strategy.snapshots[0]["vpt"], strategy.snapshots[-1]["vpt"])
    # the training loss is CE + the consistency terms against the frozen CLIP
    m = strategy.model.train()
    strategy.mb_output, strategy.mbatch = m(x[:4]), [x[:4], y[:4], torch.zeros(4, dtype=torch.long)]
    strategy.is_training = True
    with torch.no_grad():
        zs = model.encode_image(x[:4])
        zs_logits = m.teacher.logits(zs)
    want = torch.nn.functional.cross_entropy(strategy.mb_output, y[:4]) + promptsrc_consistency(
        m.features["text"], m.teacher.text_features, m.features["image"], zs, strategy.mb_output, zs_logits
    )
    torch.testing.assert_close(strategy.criterion(), want)
