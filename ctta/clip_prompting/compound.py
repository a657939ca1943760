"""MaPLe's compound prompts on the prompted CLIP: a text context, J-1 deep text prompts and the linear couplings that
map them to the vision tower, the prompt set CoPrompt and RESTORE build on.

Paper: MaPLe (Khattak et al., CVPR 2023, arXiv 2210.03117) eq. 5-6. Reference (behaviour read, re-implemented, no
code copied): muzairkhattak/multimodal-prompt-learning@69bce21 ``trainers/maple.py:MultiModalPromptLearner``, and its
copies in ShuvenduRoy/CoPrompt@a2a6c12 and Yaphabates/RESTORE_@4c64a17 (spec ``clip-prompt-learners.md`` 23.1-23.2).

Shared with wave 2: MaPLe's ``MaPLeModel``, CoPrompt's and RESTORE's models are built on it (subclasses add their
modules after ``super().__init__``, so the RNG order and the state-dict keys stay those above).
``CompoundPromptedCLIP`` sets ``ctx`` ``(n, D)`` (the first ``n_ctx`` words of ``ctx_init``, the text keeping the whole
phrase, or N(0, 0.02^2) without words), ``deep_text[i]`` ``(n, D)`` (N(0, 0.02^2)) and ``coupling``
(``MaPLeCoupling``); ``prompts()`` returns
``(ctx, [P_i], V_0, [V_i])``. The depth J must fit both towers. ``deep_and_coupling`` draws the deep prompts and
couplings alone (MaPLe+ATP, whose context is not ``context_init``'s); ``independent_prompts`` draws IVLP's uncoupled
text and vision prompts (the MaPLe paper's baseline; PromptSRC and CasPL).

Deviations: none beyond MaPLe's (see ``ctta.strategies.maple``).
"""

from __future__ import annotations

import torch
from torch import nn

from ctta.clip_prompting.coupling import MaPLeCoupling
from ctta.clip_prompting.model import PromptedCLIP
from ctta.clip_prompting.text import context_init
from ctta.clip_prompting.vision import vision_width

__all__ = ["CompoundPromptedCLIP", "deep_and_coupling", "independent_prompts", "normal_prompt"]


def normal_prompt(n: int, d: int, generator: torch.Generator | None = None) -> nn.Parameter:
    """A prompt ``(n, d)`` drawn from N(0, 0.02^2) (the references' ``nn.init.normal_(std=0.02)``)."""
    return nn.Parameter(torch.randn(n, d, generator=generator) * 0.02)


def independent_prompts(
    n_text: int, d: int, n_vis: int, w: int, depth_text: int, depth_vision: int, *, generator=None
) -> tuple[nn.ParameterList, nn.Parameter, nn.ParameterList]:
    """IVLP's uncoupled prompts (MaPLe's baseline, PromptSRC, CasPL): ``depth_text - 1`` deep text prompts
    ``(n_text, d)``, then the vision input prompt ``(n_vis, w)`` and ``depth_vision - 1`` deep vision prompts, each
    ``normal_prompt``, drawn in that order from ``generator`` (None: the global RNG). The caller checks the depths.

    Returns:
        ``(deep_text, vpt, deep_vision)``.
    """
    deep_text = nn.ParameterList(normal_prompt(n_text, d, generator) for _ in range(depth_text - 1))
    vpt = normal_prompt(n_vis, w, generator)
    return deep_text, vpt, nn.ParameterList(normal_prompt(n_vis, w, generator) for _ in range(depth_vision - 1))


def deep_and_coupling(
    clip_model: nn.Module, n: int, d: int, depth: int, *, generator: torch.Generator | None = None
) -> tuple[nn.ParameterList, MaPLeCoupling]:
    """MaPLe's J-1 deep text prompts ``(n, d)`` (N(0, 0.02^2)) and then its coupling maps, drawn in this order from
    ``generator`` (None: the global RNG). Also used by MaPLe+ATP, whose text layout differs.

    Raises:
        ValueError: unless ``1 <= depth <=`` the layers of the shallower tower (J must fit both).
    """
    n_layers = min(len(clip_model.transformer.resblocks), len(clip_model.visual.transformer.resblocks))
    if not 1 <= depth <= n_layers:
        raise ValueError(f"depth must be in 1..{n_layers} (layers of the towers), got {depth}")
    deep = nn.ParameterList(normal_prompt(n, d, generator) for _ in range(depth - 1))
    return deep, MaPLeCoupling(d, vision_width(clip_model), depth, generator=generator)


class CompoundPromptedCLIP(PromptedCLIP):
    """Frozen CLIP + MaPLe's compound prompts (``ctx``, ``deep_text``, ``coupling``).

    Args:
        clip_model, tokenizer, classnames: as ``PromptedCLIP``.
        n_ctx: context tokens.
        ctx_init: init words (``""``: random context).
        depth: J, the input layer plus J-1 deep layers (both towers).
        truncate, round_prompts: as ``PromptedCLIP``.
        generator: RNG of the random initialisations (None: the global one).
    """

    context_is_the_prompt = False  # TPT tunes the deep and coupled prompts too

    def __init__(
        self, clip_model, tokenizer, classnames, *, n_ctx: int, ctx_init: str, depth: int, truncate: bool = True,
        round_prompts: bool = True, generator: torch.Generator | None = None,
    ) -> None:  # fmt: skip
        layout, ctx0 = context_init(clip_model, tokenizer, ctx_init, n_ctx, generator=generator)
        super().__init__(clip_model, tokenizer, classnames, layout, truncate=truncate, round_prompts=round_prompts)
        self.ctx = nn.Parameter(ctx0.to(self.text.cast_dtype))
        self.deep_text, self.coupling = deep_and_coupling(clip_model, *ctx0.shape, depth, generator=generator)

    def prompts(self):
        """``(ctx, [P_i], V_0, [V_i])``."""
        deep = list(self.deep_text)
        v0, vs = self.coupling(self.ctx, deep)
        return self.ctx, deep, v0, vs
