"""PromptSRC: self-regulating prompts (Khattak et al., "Self-regulating Prompts: Foundational Model Adaptation
without Forgetting", ICCV 2023, arXiv 2307.06948). Official code: muzairkhattak/PromptSRC@bb95c77
``trainers/promptsrc.py`` and ``clip/model.py:ResidualAttentionBlock_IVLP`` (MIT; behaviour read, re-implemented
on open_clip's own modules, no code copied).

Prompts (IVLP, independent vision-language prompts): text context ``n_ctx_text`` tokens from ``ctx_init`` plus deep
text prompts at layers 1..J_t-1 (N(0, 0.02^2)) replacing them; vision prompts ``n_ctx_vision`` tokens appended
after the patch tokens plus deep vision prompts at layers 1..J_v-1 (all N(0, 0.02^2)). Loss:
``CE + KL(softmax(zs) || softmax(logits)) / numel + 25 * L1(text, frozen text) + 10 * L1(image, frozen image)``,
where the frozen text classifier is the mean over the 60 templates of the unnormalised frozen CLIP text features
(``teacher_templates: promptsrc``; ``hand`` = "a photo of a {}.") and the frozen image feature is the unprompted
CLIP's. After each epoch the trainable prompts are accumulated with Gaussian weights ``N(e; gpa_mean, gpa_std)``
(normalised over the epochs) and the average is loaded after the last epoch (GPA). The teacher is unused at
inference. Defaults: the official base-to-new config ``vit_b16_c2_ep20_batch4_4+4ctx`` (SGD lr 0.0025, batch 4,
20 epochs, J = 9 in both towers, GPA mean 15 std 1); cross-dataset: ``depth_text: 3, depth_vision: 3,
gpa_mean: 6, gpa_std: 10``.

Deviations: GPA averages the trainable prompts only, in float64 (the reference averages the whole state dict in
the model dtype; the frozen weights' average equals them up to rounding); the teacher shares the frozen backbone
(the reference loads a second copy: same weights); prompts are inserted in the running dtype (the reference
rounds them to fp16); text truncated at the longest EOT with the class-independent prefix encoded once (exact);
``prec: fp16`` applies on CUDA only; ``fp32`` and ``amp`` work (they crash in the reference; its ``amp`` path also
drops the consistency losses, which are kept here).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from ctta.strategies.promptsrc.averaging import GaussianEpochAverage
from ctta.strategies.promptsrc.losses import promptsrc_consistency
from ctta.strategies.promptsrc.templates import PROMPTSRC_TEMPLATES
from torch import nn

from ctta.clip_prompting.compound import independent_prompts
from ctta.clip_prompting.model import PromptedCLIP
from ctta.clip_prompting.teacher import HAND_CRAFTED, FrozenCLIPTeacher
from ctta.clip_prompting.template import PromptLearnerConfig, PromptLearnerTemplate, init_generator
from ctta.clip_prompting.text import context_init
from ctta.clip_prompting.vision import encode_image, vision_width
from ctta.fields import ranged
from ctta.registry import STRATEGIES

__all__ = ["PromptSRC", "PromptSRCConfig", "PromptSRCModel"]

TEACHER_TEMPLATES = {"promptsrc": PROMPTSRC_TEMPLATES, "hand": HAND_CRAFTED}


@dataclass(frozen=True)
class PromptSRCConfig(PromptLearnerConfig):
    epochs: int = ranged(20, ge=1)
    batch_size: int = ranged(4, ge=1)
    lr: float = ranged(0.0025, gt=0)
    ctx_init: str = "a photo of a"
    n_ctx_text: int = 4
    n_ctx_vision: int = 4
    depth_text: int = 9  # J_t (input layer + J_t - 1 deep layers)
    depth_vision: int = 9  # J_v
    text_loss_weight: float = 25.0
    image_loss_weight: float = 10.0
    gpa_mean: float = 15.0
    gpa_std: float = 1.0
    teacher_templates: str = "promptsrc"  # promptsrc (60 templates) | hand ("a photo of a {}.")


class PromptSRCModel(PromptedCLIP):
    """Frozen CLIP + independent text (``ctx``, ``deep_text``) and vision (``vpt``, ``deep_vision``) prompts, and a
    frozen-CLIP ``teacher``. In training mode ``forward`` also keeps the normalised features in ``self.features``."""

    context_is_the_prompt = False  # TPT tunes the deep text and vision prompts too

    def __init__(
        self, clip_model, tokenizer, classnames, cfg: PromptSRCConfig = PromptSRCConfig(), *, generator=None
    ) -> None:
        if cfg.teacher_templates not in TEACHER_TEMPLATES:
            raise ValueError(f"teacher_templates={cfg.teacher_templates!r}; valid: {sorted(TEACHER_TEMPLATES)}")
        layout, ctx0 = context_init(clip_model, tokenizer, cfg.ctx_init, cfg.n_ctx_text, generator=generator)
        super().__init__(
            clip_model, tokenizer, classnames, layout, truncate=cfg.truncate, round_prompts=cfg.round_prompts
        )
        n_text, n_vis = len(clip_model.transformer.resblocks), len(clip_model.visual.transformer.resblocks)
        if not (1 <= cfg.depth_text <= n_text and 1 <= cfg.depth_vision <= n_vis):
            raise ValueError(f"depth_text must be in 1..{n_text} and depth_vision in 1..{n_vis}")
        d, w = ctx0.shape[-1], vision_width(clip_model)
        self.ctx = nn.Parameter(ctx0.to(self.text.cast_dtype))
        self.deep_text, self.vpt, self.deep_vision = independent_prompts(
            ctx0.shape[0], d, cfg.n_ctx_vision, w, cfg.depth_text, cfg.depth_vision, generator=generator
        )
        templates = TEACHER_TEMPLATES[cfg.teacher_templates]
        self.teacher = FrozenCLIPTeacher(
            clip_model, tokenizer, classnames, templates, round_embeddings=cfg.round_prompts
        )
        self.features: dict[str, torch.Tensor] = {}

    def set_classnames(self, classnames) -> None:
        super().set_classnames(classnames)
        self.teacher.set_classnames(classnames)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        g = F.normalize(self.text(self.ctx, list(self.deep_text)), dim=-1)  # (C, E)
        f = encode_image(self.clip, images, self.vpt, list(self.deep_vision), round_prompts=self.round_prompts)
        f = F.normalize(f, dim=-1)  # (B, E)
        if self.training:
            self.features = {"text": g, "image": f}
        return self.logit_scale * f @ g.t()


@STRATEGIES.register("promptsrc", config=PromptSRCConfig)
class PromptSRC(PromptLearnerTemplate):
    """PromptSRC as an Avalanche strategy: ``model`` is a ``PromptSRCModel``; CE + the self-regulating consistency
    losses; Gaussian prompt aggregation over the epochs of each experience."""

    config_class = PromptSRCConfig

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames, cfg: PromptSRCConfig) -> PromptSRCModel:
        return PromptSRCModel(clip_model, tokenizer, classnames, cfg, generator=init_generator(cfg))

    def criterion(self) -> torch.Tensor:
        ce = self._criterion(self.mb_output, self.mb_y)
        if not self.is_training:
            return ce
        m, cfg = self.model, self.cfg
        feats = m.features
        with torch.no_grad():
            zs_image = m.teacher.image_features(self.mb_x)  # (B, E) frozen CLIP
            zs_logits = m.teacher.logits(zs_image)  # (B, C)
        logits = self.mb_output if self.seen is None else self.mb_output[:, self.seen]  # the text head's classes
        scl = promptsrc_consistency(
            feats["text"].float(), m.teacher.text_features, feats["image"].float(), zs_image,
            logits, zs_logits, cfg.text_loss_weight, cfg.image_loss_weight,
        )  # fmt: skip
        return ce + scl

    def make_optimizer(self, **kwargs) -> None:
        super().make_optimizer(**kwargs)
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.gpa = GaussianEpochAverage(named, self.train_epochs, self.cfg.gpa_mean, self.cfg.gpa_std)

    def epoch_end(self) -> None:
        self.gpa.epoch_end()
