"""MSGCoOp: multiple semantic-guided context optimisation (Rain-Bus, "MSGCoOp", 2025). Official code:
Rain-Bus/MSGCoOp@a298669 ``MSGCoOp/trainers/msgcoop.py``, ``MSGCoOp/train.py`` (MIT, inherited from CoOp; behaviour
read, re-implemented on ctta's prompting core, no code copied; spec ``clip-prompt-learners.md`` sections 14, 23.3).

Model: ``N`` parallel CoOp contexts ``ctx`` ``(N, n, D)`` (``(N, C, n, D)`` class-specific); the logits are the
mean over prompts of ``scale * cos(f, g_p)``. Frozen teacher: per class the mean of the normalised frozen-CLIP
features of ``"a photo of {name}, {desc}"`` over the LLM descriptions (``desc/gpt-4.1/descriptions_top4/<Name>.json``,
``ctta.clip_prompting.descriptions``), stored fp16-rounded and normalised at use. Loss, in this order::

    CE(mean_p logits_p) + w * (1 - mean_c cos(mean_p g_p, t_c)) + div_weight * mean_c mean_{i<j} cos^2(g_i^c, g_j^c)

where ``mean_p g_p`` averages the un-normalised per-prompt features. Defaults: the official base-to-new run
(``vit_b16_ep100_ctxv1`` with ``base2new_all.sh MSGCoOp 8.0 1.0``): N = 4, "a photo of a", SGD lr 0.002, batch 128,
100 epochs, w 8.0, div_weight 1.0, last-epoch model.

Official quirk (the default) and its switch: with words (``ctx_init``) all N prompts start from the same words,
get identical gradients and stay identical, so the ensemble is one CoOp prompt and the orthogonality term sits at
its maximum 1 with zero gradient. ``ctx_init: ""`` is the official ``CTX_INIT False`` path, the paper's intent:
independent N(0, 0.02^2) contexts of ``n_ctx`` tokens per prompt (class-specific with ``csc``); non-official results.

Trainable parameters on ViT-B/16: 8,192 (4 contexts x 4 tokens x 512; ``tests/test_coprompt.py``); no published
count was found.

Deviations: any ``ctx_init`` words are used (the reference hard-codes "a photo of a" for any true value; the default
is that phrase); the teacher shares the frozen backbone and computes in the run's precision, then rounds to fp16
(``teacher_fp16``; the reference runs a second CLIP in fp16) and is computed lazily, when the loss first needs it for
a class set (evaluation on classes without descriptions needs none); the built-but-never-trained modules
(``meta_net``, ``adapter``, ``bias_vectors``) are not built, so the RNG stream differs from the reference's; CPU works
(the reference's ``.cuda()`` calls crash without a GPU) and ``amp`` works (the reference's crashes); text truncated at
the longest EOT with the shared prefix encoded once (exact; ``truncate: false`` is the 77-token path).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ctta.clip_prompting.descriptions import DescriptionBank, load_descriptions
from ctta.clip_prompting.model import PromptedCLIP
from ctta.clip_prompting.template import PromptLearnerConfig, PromptLearnerTemplate, init_generator
from ctta.clip_prompting.text import context_init
from ctta.clip_prompting.vision import encode_image
from ctta.fields import ranged
from ctta.losses import cosine_consistency
from ctta.registry import STRATEGIES
from ctta.templates.benchmark_info import _attr, origin_info

__all__ = ["MSGCoOp", "MSGCoOpConfig", "MSGCoOpModel", "pairwise_cos2"]


@dataclass(frozen=True)
class MSGCoOpConfig(PromptLearnerConfig):
    """MSGCoOp settings (official base-to-new defaults)."""

    epochs: int = ranged(100, ge=1)
    batch_size: int = ranged(128, ge=1)
    lr: float = ranged(0.002, gt=0)
    n_prompts: int = ranged(4, ge=1)  # N parallel contexts
    ctx_init: str = "a photo of a"  # words: N identical prompts (official); "": independent random contexts
    n_ctx: int = 4  # used when ctx_init is ""
    csc: bool = False  # class-specific random contexts (needs ctx_init "")
    w: float = 8.0  # weight of the description-consistency score
    div_weight: float = 1.0  # weight of the orthogonality (diversity) term
    descriptions: str = ""  # description JSON, or a folder with the official layout, or builtin:digits
    dataset: str = ""  # catalogue name picking the official file inside a descriptions folder
    teacher_fp16: bool = True  # the reference's fp16 teacher: class features rounded to fp16


def pairwise_cos2(features: torch.Tensor) -> torch.Tensor:
    """``mean_c mean_{i<j} cos^2(g_i^c, g_j^c)`` over ``(N, C, E)`` per-prompt text features (0 for N = 1)."""
    n = features.shape[0]
    if n < 2:
        return features.new_zeros(())
    g = F.normalize(features, dim=-1)
    cos = torch.einsum("ice,jce->cij", g, g)  # (C, N, N)
    i, j = torch.triu_indices(n, n, offset=1, device=g.device)
    return cos[:, i, j].pow(2).mean()


class MSGCoOpModel(PromptedCLIP):
    """Frozen CLIP + ``N`` contexts ``ctx`` and the description ``teacher``; training forwards keep the per-prompt
    text features in ``self.features["text"]`` ``(N, C, E)``."""

    context_is_the_prompt = False  # N contexts: TPT tunes them through the model's forward

    def __init__(self, clip_model, tokenizer, classnames, cfg: MSGCoOpConfig, *, generator=None) -> None:
        if cfg.csc and cfg.ctx_init:
            raise ValueError("csc=True needs ctx_init='' (class-specific contexts start random, as in the reference)")
        if not cfg.descriptions:
            raise ValueError("MSGCoOp needs class descriptions: set descriptions= to the description JSON (official: "
                             "Rain-Bus/MSGCoOp MSGCoOp/desc/gpt-4.1/descriptions_top4/<Name>.json) or builtin:digits")
        layout, ctx0 = context_init(clip_model, tokenizer, cfg.ctx_init, 0 if cfg.ctx_init else cfg.n_ctx)
        super().__init__(clip_model, tokenizer, classnames, layout, truncate=cfg.truncate, round_prompts=False)
        n, d = ctx0.shape
        if cfg.ctx_init:
            ctx = ctx0.unsqueeze(0).repeat(cfg.n_prompts, 1, 1)  # identical prompts (the official quirk)
        else:
            shape = (cfg.n_prompts, len(classnames), n, d) if cfg.csc else (cfg.n_prompts, n, d)
            ctx = torch.randn(*shape, generator=generator) * 0.02
        self.ctx = nn.Parameter(ctx.to(self.text.cast_dtype))
        texts = load_descriptions(cfg.descriptions, "msgcoop", cfg.dataset)
        self.teacher = DescriptionBank(
            clip_model, tokenizer, texts, classnames, template="a photo of {name}, {desc}", reduce="mean",
            round_fp16=cfg.teacher_fp16,
        )  # fmt: skip
        self.features: dict[str, torch.Tensor] = {}

    def set_classnames(self, classnames) -> None:
        if self.ctx.dim() == 4 and len(classnames) != self.ctx.shape[1]:
            raise ValueError(f"class-specific contexts for {self.ctx.shape[1]} classes, got {len(classnames)} names")
        super().set_classnames(classnames)  # the teacher follows lazily (``teacher.features_for``)

    def prompt_features(self) -> torch.Tensor:
        """Un-normalised per-prompt text features ``(N, C, E)``."""
        soft = self.ctx if self.ctx.dim() == 4 else self.ctx.unsqueeze(1)  # (N, 1 or C, n, D)
        return self.text(soft)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        g = self.prompt_features()  # (N, C, E)
        f = F.normalize(encode_image(self.clip, images), dim=-1)  # (B, E)
        if self.training:
            self.features = {"text": g}
        logits = torch.einsum("be,nce->nbc", f, F.normalize(g, dim=-1))
        return self.logit_scale * logits.mean(0)


@STRATEGIES.register("msgcoop", config=MSGCoOpConfig)
class MSGCoOp(PromptLearnerTemplate):
    """MSGCoOp as an Avalanche strategy: ``model`` is an ``MSGCoOpModel``; CE + ``w`` * description score +
    ``div_weight`` * orthogonality, SGD over the contexts."""

    config_class = MSGCoOpConfig

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames, cfg: MSGCoOpConfig) -> MSGCoOpModel:
        return MSGCoOpModel(clip_model, tokenizer, classnames, cfg, generator=init_generator(cfg))

    def _class_incremental_seen(self) -> list[int] | None:
        """The template's rule, with ``(N, C, n, D)`` as the class-specific shape (``(N, n, D)`` is shared)."""
        info = origin_info(self.experience)
        if (info is not None and info.stream_classnames) or self.model.ctx.dim() == 4:
            return None
        seen = _attr(self.experience, "classes_seen_so_far")
        if not seen or max(seen) >= len(self.all_classnames):
            return None
        return sorted(int(c) for c in seen)

    def criterion(self) -> torch.Tensor:
        ce = self._criterion(self.mb_output, self.mb_y)
        if not self.is_training:
            return ce
        m = self.model
        return ce + msgcoop_regularisers(self.model.features["text"], m.teacher.features_for(m.classnames), self.cfg)


def msgcoop_regularisers(text: torch.Tensor, teacher: torch.Tensor, cfg: MSGCoOpConfig) -> torch.Tensor:
    """``w * (1 - mean_c cos(mean_p g_p, t_c)) + div_weight * pairwise_cos2(g)`` for ``(N, C, E)`` features."""
    text = text.float()
    score = cosine_consistency(text.mean(0), teacher.float())
    return cfg.w * score + cfg.div_weight * pairwise_cos2(text)
