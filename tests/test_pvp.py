"""PVP (unofficial): deep-VPT forward vs timm's own blocks; stage 1 writes the prompts, stage 2 starts from them."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from ctta.strategies.pvp import DeepVPTClassifier, PVPConfig

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs/smoke/pvp_digits.yaml"


def test_deep_vpt_forward_matches_timm_blocks_with_prompts_dropped_each_layer():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8,
                            depth=3, embed_dim=24, num_heads=3).eval()  # fmt: skip
    model = DeepVPTClassifier(vit, 5, n_prompts=2).eval()
    x = torch.randn(2, 3, 32, 32)
    t = model.backbone.embed(x)
    for i, blk in enumerate(vit.blocks):
        t = blk(torch.cat([t, model.prompts[i].detach().expand(2, -1, -1)], dim=1))[:, :-2]
    want = model.head(vit.norm(t)[:, 0])
    torch.testing.assert_close(model(x), want, atol=1e-5, rtol=1e-5)


def test_finetune_needs_a_prompts_file():
    with pytest.raises(ValueError, match="prompts_file"):
        PVPConfig(stage="finetune")
    with pytest.raises(ValueError, match="stage"):
        PVPConfig(stage="both")


def _prepare(tmp: Path, name: str, overrides: list[str]):
    from ctta.runner.config import load_config
    from ctta.runner.run import prepare

    return prepare(load_config(SMOKE, [f"log.out_dir={tmp / name}", "log.progress=false", *overrides]))


def test_stage_one_writes_the_prompts_stage_two_starts_from_them(tmp_path):
    from ctta.runner.run import execute

    pfile = tmp_path / "prompts.pt"
    ctx = _prepare(tmp_path, "s1", [f"strategy.prompts_file={pfile}", "strategy.epochs=1"])
    execute(ctx, verbose=False)
    saved = torch.load(pfile, weights_only=True)["prompts"]
    torch.testing.assert_close(saved, ctx.strategy.model.prompts.detach().cpu())
    few = ["scenario={name: few_shot, dataset: digits, shots: 2, setting: all, img_size: 32, max_test: 40}",
           "strategy.batch_size=8"]
    ctx2 = _prepare(tmp_path, "s2", [*few, "strategy.stage=finetune", f"strategy.prompts_file={pfile}"])
    torch.testing.assert_close(ctx2.strategy.model.prompts.detach().cpu(), saved)  # stage 2 starts from stage 1
    res = execute(ctx2, verbose=False)
    assert res["status"] == "finished"
    assert not torch.equal(ctx2.strategy.model.prompts.detach().cpu(), saved)  # and tunes them
    with pytest.raises(ValueError, match="n_prompts"):
        _prepare(tmp_path, "s3", [*few, "strategy.stage=finetune", f"strategy.prompts_file={pfile}",
                                  "strategy.n_prompts=3"])  # fmt: skip
