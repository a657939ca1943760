"""The core's MaPLe / IVLP prompt sets (``ctta.clip_prompting.compound``): ``deep_and_coupling`` serves MaPLe (through
``CompoundPromptedCLIP``) and MaPLe+ATP, ``independent_prompts`` / ``normal_prompt`` PromptSRC and CasPL; each model
keeps the parameter names, order and start values the code of commit 36acae9 (before the helpers) produced on the
tiny CLIP; MaPLe's depth must fit both towers."""

from __future__ import annotations

import pytest
import torch
from ctta.strategies.atprompt import ATPMaPLeConfig, ATPModel
from ctta.strategies.caspl import CasPLConfig, CasPLModel
from ctta.strategies.maple import MaPLeConfig, MaPLeModel
from ctta.strategies.promptsrc import PromptSRCConfig, PromptSRCModel

from ctta.clip_prompting.compound import deep_and_coupling, independent_prompts

NAMES = ["cat", "dog", "sea lion", "airplane"]

# Recorded with the code of commit 36acae9 (depth 2, generator seed 0): key -> (shape, float64 sum of the values), in
# state-dict order after the frozen ``clip.*`` entries.
BASELINE = {
    "maple": {
        "ctx": ((2, 64), -0.200022),
        "deep_text.0": ((2, 64), 0.134249),
        "coupling.proj.weight": ((48, 64), -1.031470),
        "coupling.proj.bias": ((48,), 0.227843),
        "coupling.deep.0.weight": ((48, 64), -3.325078),
        "coupling.deep.0.bias": ((48,), 0.754633),
    },
    "maple_atp": {
        "ctx": ((4, 64), 0.317810),
        "att.0": ((4, 64), 0.065901),
        "att.1": ((4, 64), 0.253910),
        "deep_text.0": ((4, 64), -0.298663),
        "coupling.proj.weight": ((48, 64), -4.801653),
        "coupling.proj.bias": ((48,), -0.080319),
        "coupling.deep.0.weight": ((48, 64), 2.012969),
        "coupling.deep.0.bias": ((48,), 0.602442),
    },
    "promptsrc": {
        "ctx": ((4, 64), -0.289371),
        "vpt": ((4, 48), 0.638784),
        "deep_text.0": ((4, 64), 0.131802),
        "deep_vision.0": ((4, 48), 0.002046),
    },
    "caspl": {
        "ctx": ((2, 64), -0.200022),
        "vpt": ((2, 48), -0.005674),
        "deep_text.0": ((2, 64), 0.134249),
        "deep_vision.0": ((2, 48), -0.099973),
        "boost_text.0": ((2, 64), 0.741983),
        "boost_text.1": ((2, 64), -0.017130),
        "boost_vision.0": ((2, 48), 0.217953),
        "boost_vision.1": ((2, 48), -0.013978),
    },
}


def _build(tiny, which: str, depth: int = 2):
    model, tok = tiny
    gen = torch.Generator().manual_seed(0)
    if which == "maple":
        return MaPLeModel(model, tok, NAMES, MaPLeConfig(depth=depth), generator=gen)
    if which == "promptsrc":
        cfg = PromptSRCConfig(depth_text=2, depth_vision=2, teacher_templates="hand")
        return PromptSRCModel(model, tok, NAMES, cfg, generator=gen)
    if which == "caspl":
        cfg = CasPLConfig(n_boost=2, n_ctx_text=2, n_ctx_vision=2, depth_text=2, depth_vision=2)
        return CasPLModel(model, tok, NAMES, cfg, generator=gen)
    return ATPModel(model, tok, NAMES, ATPMaPLeConfig(), depth=depth, generator=gen)


@pytest.mark.parametrize("which", list(BASELINE))
def test_keys_and_start_values_are_the_pre_helper_ones(tiny, which):
    sd = _build(tiny, which).state_dict()
    own = {k: v for k, v in sd.items() if not k.startswith(("clip.", "teacher"))}
    assert list(own) == list(BASELINE[which])
    for k, (shape, total) in BASELINE[which].items():
        assert tuple(own[k].shape) == shape, k
        assert float(own[k].double().sum()) == pytest.approx(total, abs=2e-6), k


def test_deep_and_coupling_draws_deep_prompts_then_couplings(tiny):
    model, _ = tiny
    deep, coupling = deep_and_coupling(model, 3, 64, 2, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    expected = torch.randn(3, 64, generator=g) * 0.02  # the deep prompt is drawn first, from the same generator
    assert len(deep) == 1 and torch.equal(deep[0], expected)
    assert len(coupling.deep) == 1 and coupling.proj.in_features == 64
    v0, vs = coupling(torch.zeros(3, 64), list(deep))
    assert v0.shape == (3, coupling.proj.out_features) and len(vs) == 1


def test_independent_prompts_draw_order():
    deep_t, vpt, deep_v = independent_prompts(2, 8, 3, 5, 2, 3, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    expected = [torch.randn(*shape, generator=g) * 0.02 for shape in ((2, 8), (3, 5), (3, 5), (3, 5))]
    got = [*deep_t, vpt, *deep_v]  # deep text, then the vision input prompt, then the deep vision prompts
    assert len(deep_t) == 1 and len(deep_v) == 2
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


@pytest.mark.parametrize("which", ["maple", "maple_atp"])
@pytest.mark.parametrize("depth", [0, 3])
def test_depth_must_fit_both_towers(tiny, which, depth):
    if which == "maple_atp" and depth == 0:
        assert not hasattr(_build(tiny, which, depth), "coupling")  # CoOp+ATP: no deep prompts
        return
    with pytest.raises(ValueError, match=r"depth must be in 1\.\.2"):
        _build(tiny, which, depth)
