"""RESTORE on the core's ``CompoundPromptedCLIP``: the state-dict keys, start values and logits the pre-refactor code
(commit 36acae9, which built MaPLe's prompt set by hand) produced on the tiny CLIP, the MaPLe part bit-identical to the
core's, and a saved state dict restoring the outputs exactly (checkpoints written before the refactor still load)."""

from __future__ import annotations

import pytest
import torch
from ctta.strategies.restore import RESTOREConfig, RESTOREModel

from ctta.clip_prompting.compound import CompoundPromptedCLIP

NAMES = ["cat", "dog", "sea lion", "airplane"]

# Recorded with the code of commit 36acae9: RESTOREModel(tiny CLIP, NAMES, RESTOREConfig(depth=2), seed 0); key ->
# (shape, float64 sum of the start values), in state-dict order after the frozen ``clip.*`` entries.
BASELINE_KEYS = {
    "ctx": ((2, 64), -0.200022),
    "deep_text.0": ((2, 64), 0.134249),
    "coupling.proj.weight": ((48, 64), -1.032004),
    "coupling.proj.bias": ((48,), 0.227864),
    "coupling.deep.0.weight": ((48, 64), -3.325078),
    "coupling.deep.0.bias": ((48,), 0.754633),
    "text_adapter.ratio": ((), 0.100000),
    "text_adapter.module.post_ln.weight": ((32,), 32.000000),
    "text_adapter.module.post_ln.bias": ((32,), 0.000000),
    "text_adapter.module.FFN.0.weight": ((128, 32), 4.200950),
    "text_adapter.module.FFN.0.bias": ((128,), -0.393733),
    "text_adapter.module.FFN.2.weight": ((32, 128), 5.370368),
    "text_adapter.module.FFN.2.bias": ((32,), 0.513194),
    "visual_adapter.ratio": ((), 0.100000),
    "visual_adapter.module.post_ln.weight": ((32,), 32.000000),
    "visual_adapter.module.post_ln.bias": ((32,), 0.000000),
    "visual_adapter.module.FFN.0.weight": ((128, 32), 2.516066),
    "visual_adapter.module.FFN.0.bias": ((128,), -1.171391),
    "visual_adapter.module.FFN.2.weight": ((32, 128), 0.630834),
    "visual_adapter.module.FFN.2.bias": ((32,), 0.190209),
}
# The same model's eval logits on ``_images()`` (commit 36acae9).
BASELINE_LOGITS = [
    [7.692880153656006, 7.400784969329834, 5.348811626434326, 7.9032182693481445],
    [7.805408477783203, 7.574493408203125, 5.507026195526123, 8.155570030212402],
]


def _model(tiny, seed: int = 0, **kw) -> RESTOREModel:
    model, tok = tiny
    return RESTOREModel(model, tok, NAMES, RESTOREConfig(depth=2, **kw), generator=torch.Generator().manual_seed(seed))


def _images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def test_keys_start_values_and_logits_are_the_pre_refactor_ones(tiny):
    m = _model(tiny).eval()
    own = {k: v for k, v in m.state_dict().items() if not k.startswith("clip.")}
    assert list(own) == list(BASELINE_KEYS)  # names and order: old checkpoints load with strict=True
    for k, (shape, total) in BASELINE_KEYS.items():
        assert tuple(own[k].shape) == shape, k
        assert float(own[k].double().sum()) == pytest.approx(total, abs=2e-6), k  # same RNG order
    with torch.no_grad():
        torch.testing.assert_close(m(_images()), torch.tensor(BASELINE_LOGITS), atol=1e-5, rtol=1e-5)


def test_maple_part_is_the_core_compound_prompt_set(tiny):
    model, tok = tiny
    m = _model(tiny, fp16_init=False)
    core = CompoundPromptedCLIP(model, tok, NAMES, n_ctx=2, ctx_init="a photo of a", depth=2,
                                generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert isinstance(m, CompoundPromptedCLIP)
    ref = core.state_dict()
    for k, v in m.state_dict().items():
        if k in ref:
            assert torch.equal(v, ref[k]), k
    assert set(ref) <= set(m.state_dict())
    with torch.no_grad():
        for a, b in zip(m.prompts(), core.prompts()):
            for x, y in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
                assert torch.equal(x, y)


@pytest.mark.parametrize("kw", [{}, {"learn_ratios": True, "n_ctx": 3, "ctx_init": ""}])
def test_saved_state_dict_restores_outputs_exactly(tiny, kw):
    src = _model(tiny, **kw)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in src.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    src.raise_ratios(0.02, 0.005)
    dst = _model(tiny, seed=7, **kw)  # another start: everything must come from the state dict
    assert not torch.equal(dst.coupling.proj.weight, src.coupling.proj.weight)
    dst.load_state_dict(src.state_dict(), strict=True)
    src.eval(), dst.eval()
    with torch.no_grad():
        assert torch.equal(dst(_images(3)), src(_images(3)))
    assert dst.ratios() == src.ratios()
