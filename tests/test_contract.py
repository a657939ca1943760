"""Contract over every smoke config (one per registered strategy): trains, loss finite, backbone
bit-identical, only prompt/head parameters change, metrics and outputs written."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ctta.registry import STRATEGIES
from ctta.runner.config import load_config
from ctta.runner.run import execute, prepare
from tests.conftest import SMOKE_CONFIGS


def test_every_strategy_has_a_smoke_config():
    covered = {load_config(p).strategy.name for p in SMOKE_CONFIGS}
    assert set(STRATEGIES) <= covered, f"strategies without configs/smoke/*.yaml: {set(STRATEGIES) - covered}"


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("path", SMOKE_CONFIGS, ids=[p.stem for p in SMOKE_CONFIGS])
def test_smoke_config_contract(path, tmp_path):
    cfg = load_config(path, [f"log.out_dir={tmp_path}", "log.progress=false", "device=cpu"])
    ctx = prepare(cfg)
    backbone_before = _state(ctx.backbone)
    model = ctx.strategy.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    params_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert trainable, "strategy has no trainable parameters"

    results = execute(ctx, verbose=False)

    for k, v in _state(ctx.backbone).items():
        assert torch.equal(v, backbone_before[k]), f"backbone tensor {k} changed"
    changed = {n for n, p in model.named_parameters() if n in params_before and not torch.equal(p, params_before[n])}
    assert changed <= trainable, f"frozen parameters changed: {sorted(changed - trainable)[:5]}"
    if not ctx.is_tta or not getattr(ctx.strategy, "episodic", True):
        assert changed, "no trainable parameter changed"
    loss = ctx.strategy.loss
    assert torch.isfinite(torch.as_tensor(loss)).all(), f"loss not finite: {loss}"
    assert results["summary"], "no summary metrics"
    assert all(math.isfinite(v) for v in results["summary"].values())
    for name in ("results.json", "metrics.csv", "config.yaml", "accuracy.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["summary"] == pytest.approx(results["summary"])
    assert saved["seed"] == cfg.seed
    assert saved["versions"]["torch"] and saved["config"]["strategy"]["name"] == cfg.strategy.name
