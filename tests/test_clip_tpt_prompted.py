"""TPT as test-time tuning of a prompted CLIP: a trained CoOp / MaPLe / CoCoOp / PromptSRC model handed to TPT as an
object starts exactly where TPT started from the same prompts loaded from a file; MaPLe's deep prompts are tuned."""

from __future__ import annotations

import pytest
import torch
from ctta.strategies.cocoop import CoCoOpConfig, CoCoOpModel
from ctta.strategies.coop import CoOpConfig, CoOpModel
from ctta.strategies.maple import MaPLeConfig, MaPLeModel
from ctta.strategies.promptsrc import PromptSRCConfig, PromptSRCModel
from ctta.strategies.tpt import TPT, PromptTuner, TPTConfig

from ctta.clip_prompting.episode_model import save_prompts, trainable_state
from ctta.clip_prompting.model import save_text_context

NAMES = ["cat", "dog", "bird", "sea lion"]


def _views(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _trained(model: torch.nn.Module) -> torch.nn.Module:
    """Stand-in for training: move every trainable parameter."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def test_trained_coop_object_equals_coop_file(tiny, tmp_path):
    model, tok = tiny
    coop = _trained(CoOpModel(model, tok, NAMES, CoOpConfig()))
    path = save_text_context(coop, tmp_path / "coop.pth")
    cfg = TPTConfig(selection_p=0.25, episode_batch=2)
    from_object = PromptTuner.from_prompted(coop, cfg)
    from_file = PromptTuner(model, tok, NAMES, TPTConfig(selection_p=0.25, episode_batch=2, init=f"coop:{path}"))
    assert torch.equal(from_object.text.ctx0, from_file.text.ctx0) and torch.equal(from_object.text.ctx0, coop.ctx)
    out_obj, out_file = from_object.predict_many(_views()), from_file.predict_many(_views())
    assert torch.equal(out_obj, out_file)
    assert torch.equal(from_object.last_ctx, from_file.last_ctx)  # the first (only) step, per sample
    assert not torch.equal(from_object.last_ctx[0], coop.ctx.detach())  # the step moved the context


@pytest.mark.parametrize("method", ["maple", "promptsrc", "cocoop"])
def test_trained_prompted_object_equals_prompts_file(tiny, tmp_path, method):
    model, tok = tiny
    build = {
        "maple": lambda: MaPLeModel(model, tok, NAMES, MaPLeConfig(depth=2)),
        "promptsrc": lambda: PromptSRCModel(
            model, tok, NAMES, PromptSRCConfig(depth_text=2, depth_vision=2, teacher_templates="hand")
        ),
        "cocoop": lambda: CoCoOpModel(model, tok, NAMES, CoCoOpConfig()),
    }[method]
    torch.manual_seed(1)
    trained = _trained(build())
    path = save_prompts(trained, tmp_path / f"{method}.pth")
    start = trainable_state(trained)
    torch.manual_seed(2)
    fresh = build()  # other random prompts until the file is loaded
    cfg = TPTConfig(selection_p=0.25)
    from_object = PromptTuner.from_prompted(trained, cfg)
    from_file = PromptTuner.from_prompted(fresh, TPTConfig(selection_p=0.25, init=f"prompts:{path}"))
    out_obj, out_file = from_object.predict_many(_views()), from_file.predict_many(_views())
    assert torch.equal(out_obj, out_file) and torch.equal(from_object.last_ctx, from_file.last_ctx)
    flat0 = torch.cat([v.flatten() for v in start.values()])
    assert not torch.equal(from_object.last_ctx[0], flat0)  # the first step moved the prompts
    if method == "maple":  # the deep text prompts are among them
        n_deep = trained.deep_text[0].numel()
        offset = trained.ctx.numel()
        deep_after = from_object.last_ctx[0, offset : offset + n_deep]
        assert not torch.equal(deep_after, trained.deep_text[0].detach().flatten())
    for name, p in trained.named_parameters():  # episodic: the trained prompts are restored after each sample
        if p.requires_grad:
            assert torch.equal(p.detach(), start[name])


def test_tpt_strategy_takes_a_prompted_model(tiny):
    model, tok = tiny
    maple = _trained(MaPLeModel(model, tok, NAMES, MaPLeConfig(depth=2)))
    strategy = TPT(model=maple, classnames=NAMES, selection_p=0.25)
    assert strategy.tuner.prompted is maple
    with torch.no_grad():
        direct = PromptTuner.from_prompted(maple, TPTConfig(selection_p=0.25, tta_steps=0)).predict_many(_views())
        torch.testing.assert_close(direct, maple(_views()[:, 0]))  # zero steps: the trained model's prediction


def test_difftpt_strategy_takes_a_prompted_model(tiny):
    from ctta.strategies.difftpt import DiffTPT

    model, tok = tiny
    maple = MaPLeModel(model, tok, NAMES, MaPLeConfig(depth=2))
    strategy = DiffTPT(model=maple, classnames=NAMES)
    assert strategy.tuner.prompted is maple and strategy.tuner.clip is model
    assert strategy.tuner.select_fn.__qualname__.startswith("make_select_fn")  # DiffTPT's filtration, not TPT's
