"""OGEN: the feature generator, the per-class statistics and neighbours, the loss weighting (MSE-only warm-up), which
parameters each phase trains, the base-to-new run (new class names from the benchmark) and the self-distillation
switch (off by default, as the released code)."""

from __future__ import annotations

import json

import pytest
import torch
from ctta.strategies.ogen import FeatureGenerator, ogen_loss

from tests.helpers import SMOKE

PARTS = {"mse_unknown": 0.01, "mse_known": 0.02, "ce_unknown": 1.0, "ce_known": 2.0, "ce_new": 3.0, "ce_real": 4.0}


def test_generator_outputs_unit_features_per_query():
    gen = FeatureGenerator(8, heads=4, dropout=0.0)
    q, kv = torch.randn(2, 3, 8), torch.randn(2, 1, 8)
    out = gen(q, kv, kv)
    assert out.shape == (2, 3, 8)
    assert torch.allclose(out.norm(dim=-1), torch.ones(2, 3))


def test_loss_weights_and_warm_up():
    parts = {k: torch.tensor(v) for k, v in PARTS.items()}
    assert ogen_loss(parts, ce_on=False).item() == pytest.approx(512 * 0.03)
    expected = 512 * 0.03 + 0.25 * 1 + 0.25 / 3 * 2 + 0.5 / 3 * 3 + 0.25 * 4
    assert ogen_loss(parts, ce_on=True).item() == pytest.approx(expected)


def _prepare(tmp_path, *overrides):
    from ctta.runner.config import load_config
    from ctta.runner.run import prepare

    return prepare(load_config(SMOKE / "ogen_digits_ood.yaml", [f"log.out_dir={tmp_path}", "log.progress=false",
                                                                  "device=cpu", *overrides]))  # fmt: skip


def test_statistics_and_nearest_classes(tmp_path):
    model = _prepare(tmp_path).strategy.model
    feats = torch.tensor([[1.0, 0, 0, 0], [3, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0.2, 0], [0.9, 0.1, 0, 0]])
    feats = torch.nn.functional.pad(feats, (0, model.mean.shape[1] - 4))
    model.nearest = torch.zeros(5, 1, dtype=torch.long)
    model.set_statistics(feats, torch.tensor([0, 0, 1, 2, 3]), k=1)
    assert model.mean[0, 0] == 2 and model.std[0, 0] == pytest.approx(2**0.5)  # unbiased std of {1, 3}
    assert model.std[1].abs().sum() == 0  # one image: std 0
    assert model.nearest[:4, 0].tolist() == [3, 2, 1, 0]  # nearest other class by cosine of the means


def test_warm_up_trains_the_generator_only_then_the_context(tmp_path):
    from ctta.runner.run import execute

    ctx = _prepare(tmp_path / "a", "strategy.epochs=5", "strategy.warmup_fraction=1.0")  # MSE only: 5 warm-up epochs
    ctx0, gen0 = ctx.strategy.model.ctx.detach().clone(), ctx.strategy.model.generator.mlp[0].weight.detach().clone()
    execute(ctx, verbose=False)
    assert torch.equal(ctx.strategy.model.ctx, ctx0)  # the MSE terms use detached text features
    assert not torch.equal(ctx.strategy.model.generator.mlp[0].weight, gen0)
    ctx = _prepare(tmp_path / "b", "strategy.epochs=1", "strategy.warmup_fraction=0.0")
    ctx0 = ctx.strategy.model.ctx.detach().clone()
    execute(ctx, verbose=False)
    assert not torch.equal(ctx.strategy.model.ctx, ctx0)


def test_base_to_new_run_reads_the_new_names_from_the_benchmark(tmp_path):
    from ctta.runner.config import load_config
    from ctta.runner.run import execute, prepare

    cfg = load_config(SMOKE / "coop_digits.yaml", [f"log.out_dir={tmp_path}", "log.progress=false", "device=cpu",
                                                    "strategy.name=ogen", "strategy.epochs=2"])  # fmt: skip
    ctx = prepare(cfg)
    assert ctx.strategy.model.new_text.classnames == ["five", "six", "seven", "eight", "nine"]
    execute(ctx, verbose=False)
    summary = json.loads((tmp_path / "results.json").read_text())["summary"]
    assert {"base_acc", "new_acc", "hm"} <= set(summary)


def test_self_distillation_is_off_by_default_and_changes_training_when_on(tmp_path):
    from ctta.runner.run import execute

    runs = {}
    for flag in ("false", "true"):
        ctx = _prepare(tmp_path / flag, "strategy.epochs=3", "strategy.warmup_fraction=0.0",
                       f"strategy.self_distillation={flag}", "strategy.distill_weight=50.0")  # fmt: skip
        torch.manual_seed(0)
        execute(ctx, verbose=False)
        runs[flag] = ctx.strategy.model.ctx.detach().clone()
    assert not torch.equal(runs["false"], runs["true"])
