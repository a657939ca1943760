"""ATPrompt: attribute-embedded textual prompts on CoOp and on MaPLe (Li et al., "Advancing Textual Prompt
Learning with Anchored Attributes", arXiv 2412.09442). Official code: zhengli97/ATPrompt@86980a1
``trainers/coop_atp.py`` and ``trainers/maple_atp.py`` (no licence file at the repository root; behaviour read,
re-implemented on open_clip, no code copied).

The prompt of class ``c`` is ``[SOS] A_1 attr_1 A_2 attr_2 ... ctx <name_c> . [EOT]``: per attribute a block of
``n_att`` soft tokens (N(0, 0.01^2)) followed by the attribute word as hard text, then the class-agnostic context
(``n_ctx`` tokens, N(0, 0.02^2)). ``coop_atp`` trains these with CoOp's cross-entropy; ``maple_atp`` adds MaPLe's
deep text prompts, which replace only the context block at layers 1..J-1 (the SOS and attribute blocks are kept),
and its coupled vision prompts ``V_0 = F_0(ctx)``, ``V_i = F_i(P_i)``. ``ATTRIBUTES`` holds the attribute words the
official training script hard-codes per dataset. Defaults (official docs): CoOp+ATP SGD lr 0.002, batch 32,
100 epochs, n_ctx = n_att = 2; MaPLe+ATP n_ctx = n_att = 4, lr 0.0035, batch 4, 5 epochs, J = 9 (the official
scripts grid-search n_ctx in {2, 4} and epochs in {5, 10}).

Attribute words of several BPE tokens (``attribute_slicing``): the official code slices the tokenised template
``"X X <att1> X X <att2> X X <name>."`` assuming one token per attribute word, so the soft tokens overwrite those
nominal positions: with OxfordPets' "playfulness" (``play`` + ``fulness``) the encoder sees
``[SOS, A1, A1, play, A2, A2, X, ctx, ctx, X, <name>, ., EOT]`` ("energy" never seen; the text keeps its full
length and EOT position), and MaPLe+ATP's deep prompts go to position ``1 + n_attributes * (n_ctx + 1)`` (the
official offset, computed with ``n_ctx``). ``attribute_slicing="official"`` (default) reproduces this;
``"whole"`` keeps every word whole (ctta's earlier behaviour; deep prompts replace the context block itself). The
two settings give identical inputs when every attribute word is one token and ``n_att == n_ctx``.

Official attribute words (open_clip's BPE; ``*`` = several tokens, where the settings differ):

============== ======================================= ============================
dataset        attribute words                         multi-token words
============== ======================================= ============================
imagenet       color, shape                            -
caltech101     shape, size                             -
oxford_pets    playfulness*, energy                    playfulness = play + fulness
stanford_cars  luxury                                  -
oxford_flowers color, habitat, growth                  -
food101        flavor, preparation                     -
fgvc_aircraft  design, range                           -
sun397         function                                -
dtd            pattern, color, design                  -
eurosat        habitat                                 -
ucf101         precision                               -
============== ======================================= ============================

Deviations: unused attribute blocks are not created (the reference always allocates
three); the attribute search stage (GPT query and differentiable selection) is not included; text truncated at the
longest EOT with the class-independent prefix encoded once (exact); ``prec: fp16`` applies on CUDA only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ctta.clip_prompting.compound import deep_and_coupling
from ctta.clip_prompting.model import PromptedCLIP
from ctta.clip_prompting.template import PromptLearnerConfig, PromptLearnerTemplate, init_generator
from ctta.clip_prompting.vision import encode_image
from ctta.fields import ranged
from ctta.registry import STRATEGIES

__all__ = ["ATTRIBUTES", "ATPCoOp", "ATPCoOpConfig", "ATPMaPLe", "ATPMaPLeConfig", "ATPModel"]

#: attribute words per dataset (the official ``train.py:choose_attribute_for_atprompt``)
ATTRIBUTES = {
    "imagenet": ("color", "shape"),
    "caltech101": ("shape", "size"),
    "oxford_pets": ("playfulness", "energy"),
    "stanford_cars": ("luxury",),
    "oxford_flowers": ("color", "habitat", "growth"),
    "food101": ("flavor", "preparation"),
    "fgvc_aircraft": ("design", "range"),
    "sun397": ("function",),
    "dtd": ("pattern", "color", "design"),
    "eurosat": ("habitat",),
    "ucf101": ("precision",),
}


@dataclass(frozen=True)
class ATPCoOpConfig(PromptLearnerConfig):
    epochs: int = ranged(100, ge=1)
    batch_size: int = ranged(32, ge=1)
    lr: float = ranged(0.002, gt=0)
    attributes: tuple[str, ...] = ("color", "shape")
    n_att: int = 2  # soft tokens before each attribute word
    n_ctx: int = 2  # class-agnostic context tokens
    # official: soft tokens placed as if every attribute word were one BPE token (the reference's slicing);
    # whole: multi-token attribute words kept whole (see the module docstring)
    attribute_slicing: str = "official"


@dataclass(frozen=True)
class ATPMaPLeConfig(ATPCoOpConfig):
    epochs: int = ranged(5, ge=1)
    batch_size: int = ranged(4, ge=1)
    lr: float = ranged(0.0035, gt=0)
    n_att: int = 4
    n_ctx: int = 4
    depth: int = 9  # J (MaPLe); 1 = no deep prompts


class ATPModel(PromptedCLIP):
    """Frozen CLIP + attribute blocks ``att[k]`` ``(n_att, D)`` and context ``ctx`` ``(n_ctx, D)``; with ``depth`` > 0
    (MaPLe+ATP) also deep text prompts and MaPLe's coupled vision prompts."""

    context_is_the_prompt = False  # attribute tokens (and deep prompts): TPT tunes every trainable prompt

    def __init__(
        self, clip_model, tokenizer, classnames, cfg: ATPCoOpConfig, depth: int = 0, *, generator=None
    ) -> None:
        if not cfg.attributes or cfg.n_att < 1 or cfg.n_ctx < 1:
            raise ValueError("ATPrompt needs at least one attribute, n_att >= 1 and n_ctx >= 1")
        if cfg.attribute_slicing not in ("official", "whole"):
            raise ValueError(f"attribute_slicing={cfg.attribute_slicing!r}; valid: 'official', 'whole'")
        layout = [x for a in cfg.attributes for x in (cfg.n_att, a)] + [cfg.n_ctx]
        official = cfg.attribute_slicing == "official"
        super().__init__(
            clip_model, tokenizer, classnames, layout, truncate=cfg.truncate, round_prompts=cfg.round_prompts,
            one_token_words=official, deep_start=1 + len(cfg.attributes) * (cfg.n_ctx + 1) if official else None,
        )  # fmt: skip
        d = self.text.token_embedding.shape[-1]
        self.att = nn.ParameterList(
            nn.Parameter(torch.randn(cfg.n_att, d, generator=generator) * 0.01) for _ in cfg.attributes
        )
        self.ctx = nn.Parameter(torch.randn(cfg.n_ctx, d, generator=generator) * 0.02)
        self.depth = depth
        if depth:
            self.deep_text, self.coupling = deep_and_coupling(clip_model, cfg.n_ctx, d, depth, generator=generator)

    def soft_tokens(self) -> torch.Tensor:
        return torch.cat([*self.att, self.ctx])  # (n_soft, D) in layout order

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.depth:
            return self.logits(encode_image(self.clip, images), self.text(self.soft_tokens()))
        deep = list(self.deep_text)
        v0, vs = self.coupling(self.ctx, deep)
        g = self.text(self.soft_tokens(), deep)  # deep prompts replace the context block only
        return self.logits(encode_image(self.clip, images, v0, vs, round_prompts=self.round_prompts), g)


@STRATEGIES.register("coop_atp", config=ATPCoOpConfig)
class ATPCoOp(PromptLearnerTemplate):
    """CoOp + ATPrompt as an Avalanche strategy (``model``: an ``ATPModel`` without deep prompts)."""

    config_class = ATPCoOpConfig

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames, cfg: ATPCoOpConfig) -> ATPModel:
        return ATPModel(clip_model, tokenizer, classnames, cfg, generator=init_generator(cfg))


@STRATEGIES.register("maple_atp", config=ATPMaPLeConfig)
class ATPMaPLe(PromptLearnerTemplate):
    """MaPLe + ATPrompt as an Avalanche strategy (``model``: an ``ATPModel`` with deep, coupled prompts)."""

    config_class = ATPMaPLeConfig

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames, cfg: ATPMaPLeConfig) -> ATPModel:
        return ATPModel(clip_model, tokenizer, classnames, cfg, depth=cfg.depth, generator=init_generator(cfg))
