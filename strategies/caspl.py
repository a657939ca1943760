"""CasPL: cascade prompt learning (Wu et al., "Cascade Prompt Learning for Vision-Language Model Adaptation",
ECCV 2024). Unofficial, from the paper: megvii-research/CasPL@8854e48 (Apache-2.0) holds a README and figures only,
the code is not released (spec ``clip-prompt-learners.md`` section 11).

Prompts: a cascade of **boosting** prompts and **adapting** prompts in both towers (IVLP layout): the text context is
``[boost_text (b), adapt ctx (n)]`` before the class name and the deep text prompts at layers 1..J_t-1 are the
concatenation of a boosting and an adapting prompt per layer; the vision prompts likewise (``[boost, adapt]``
appended after the patch tokens, replaced at layers 1..J_v-1).

Training of an experience, two phases:

1. boosting (``boost_epochs`` passes over the training images, labels unused, before the first experience only):
   only the boosting prompts train, SGD at ``boost_lr``, with PromptKD's distillation loss from a larger frozen
   teacher CLIP (``teacher_model``, e.g. ViT-L/14) on its ``teacher_template`` classifier::

       KL(softmax(z_teacher / T) || softmax(z_student / T)) * T^2, summed and divided by z_student.numel()

2. adapting (the ``epochs`` of the experience): the boosting prompts are frozen and the adapting prompts train with
   the base method's loss, cross-entropy.

Choices the paper leaves open, with the value taken and why:

- base method: IVLP, the independent vision-language prompts PromptSRC trains (the README's
  ``train_script/caspl_promptsrc``), with cross-entropy only: PromptSRC's self-regulating losses and Gaussian prompt
  aggregation live in ``strategies/promptsrc`` and methods do not import each other; PromptSRC's B2N schedule (lr
  0.0025, batch 4, 20 epochs, 4+4 adapting tokens from "a photo of a" / N(0, 0.02^2), J = 9) for phase 2;
- boosting prompts: ``n_boost`` = 4 tokens per tower at every prompted layer, N(0, 0.02^2) (PromptKD's IVLP
  student), in front of the adapting ones; phase 1 sees the adapting prompts at their initial values (one layout);
- unlabeled domain data: the experience's own training images (the standard few-shot protocol has no other
  images; PromptKD uses the full unlabeled training set), ``boost_epochs`` = 20, ``boost_lr`` = 0.005, T = 1;
- KD teacher: its own template classifier over the experience's class names, computed in fp32; it is held outside
  the module tree (not saved in checkpoints), moved to the images' device when used;
- phase 1 runs without autocast and with a constant learning rate (PromptKD's schedule was not read).

Trainable parameters on ViT-B/16: phase 1 the boosting prompts, 9 x 4 x 512 + 9 x 4 x 768 = 46,080; phase 2
the 46,080 adapting parameters (PromptSRC's count) (``tests/test_caspl.py``); no published count was found.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ctta.clip_prompting.compound import independent_prompts, normal_prompt
from ctta.clip_prompting.model import PromptedCLIP
from ctta.clip_prompting.template import PromptLearnerConfig, PromptLearnerTemplate, init_generator
from ctta.clip_prompting.text import context_init
from ctta.clip_prompting.vision import encode_image, vision_width
from ctta.fields import ranged
from ctta.registry import STRATEGIES

__all__ = ["CasPL", "CasPLConfig", "CasPLModel", "kd_loss"]


@dataclass(frozen=True)
class CasPLConfig(PromptLearnerConfig):
    """IVLP adapting prompts at PromptSRC's B2N settings (phase 2) + the boosting phase."""

    epochs: int = ranged(20, ge=1)
    batch_size: int = ranged(4, ge=1)
    lr: float = ranged(0.0025, gt=0)
    ctx_init: str = "a photo of a"
    n_ctx_text: int = ranged(4, ge=1)
    n_ctx_vision: int = ranged(4, ge=1)
    depth_text: int = ranged(9, ge=1)  # J_t (input layer + J_t - 1 deep layers)
    depth_vision: int = ranged(9, ge=1)  # J_v
    n_boost: int = ranged(4, ge=1)  # boosting tokens per prompted layer, each tower
    boost_epochs: int = ranged(20, ge=0)  # phase-1 passes over the training images (0: no boosting)
    boost_lr: float = ranged(0.005, gt=0)
    kd_temperature: float = ranged(1.0, gt=0)
    teacher_model: str = "ViT-L-14"  # open_clip name of the KD teacher
    teacher_pretrained: str = "openai"
    teacher_template: str = "a photo of a {}."


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """PromptKD's ``sum KL(softmax(t/T) || softmax(s/T)) * T^2 / s.numel()`` for ``(B, C)`` logits."""
    t = temperature
    log_p = F.log_softmax(student.float() / t, dim=-1)
    q = F.softmax(teacher.float() / t, dim=-1)
    return F.kl_div(log_p, q, reduction="sum") * t * t / student.numel()


class CasPLModel(PromptedCLIP):
    """Frozen CLIP + adapting IVLP prompts (``ctx``, ``deep_text``, ``vpt``, ``deep_vision``) with boosting prompts
    (``boost_text``, ``boost_vision``: input layer + deep layers) cascaded in front of them in both towers."""

    context_is_the_prompt = False

    def __init__(self, clip_model, tokenizer, classnames, cfg: CasPLConfig, *, generator=None, teacher=None) -> None:
        layout, ctx0 = context_init(clip_model, tokenizer, cfg.ctx_init, cfg.n_ctx_text, generator=generator)
        layout = [layout[0] + cfg.n_boost, *layout[1:]]  # [boost + adapt, hard words]
        super().__init__(clip_model, tokenizer, classnames, layout, truncate=cfg.truncate,
                         round_prompts=cfg.round_prompts)  # fmt: skip
        n_text, n_vis = len(clip_model.transformer.resblocks), len(clip_model.visual.transformer.resblocks)
        if not (cfg.depth_text <= n_text and cfg.depth_vision <= n_vis):
            raise ValueError(f"depth_text must be in 1..{n_text} and depth_vision in 1..{n_vis}")
        d, w, n = ctx0.shape[-1], vision_width(clip_model), ctx0.shape[0]
        self.ctx = nn.Parameter(ctx0.to(self.text.cast_dtype))
        self.deep_text, self.vpt, self.deep_vision = independent_prompts(
            n, d, cfg.n_ctx_vision, w, cfg.depth_text, cfg.depth_vision, generator=generator
        )
        self.boost_text = nn.ParameterList(normal_prompt(cfg.n_boost, d, generator) for _ in range(cfg.depth_text))
        self.boost_vision = nn.ParameterList(normal_prompt(cfg.n_boost, w, generator) for _ in range(cfg.depth_vision))
        self.kd_teacher = [teacher]  # (clip, tokenizer) or None; not a submodule
        self.boosted = False

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        bt, bv = list(self.boost_text), list(self.boost_vision)
        ctx = torch.cat([bt[0].to(self.ctx.dtype), self.ctx])
        deep_t = [torch.cat([b, p]) for b, p in zip(bt[1:], self.deep_text)]
        vpt = torch.cat([bv[0], self.vpt])
        deep_v = [torch.cat([b, p]) for b, p in zip(bv[1:], self.deep_vision)]
        g = F.normalize(self.text(ctx, deep_t), dim=-1)
        f = F.normalize(encode_image(self.clip, images, vpt, deep_v, round_prompts=self.round_prompts), dim=-1)
        return self.logit_scale * f @ g.t()

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor, template: str) -> torch.Tensor:
        """Zero-shot logits of the KD teacher over the current class names (fp32)."""
        clip, tok = self.kd_teacher[0]
        clip.to(images.device).float()
        key = (template, tuple(self.classnames), images.device)
        if getattr(self, "_kd_text", (None,))[0] != key:  # the classifier is encoded once per class set
            names = [template.format(c.replace("_", " ")) for c in self.classnames]
            self._kd_text = (key, clip.encode_text(tok(names).to(images.device)))
        t = self._kd_text[1]
        f = clip.encode_image(images.float())
        return clip.logit_scale.exp() * F.normalize(f, dim=-1) @ F.normalize(t, dim=-1).t()


@STRATEGIES.register("caspl", config=CasPLConfig)
class CasPL(PromptLearnerTemplate):
    """CasPL as an Avalanche strategy: the boosting phase before the first experience's optimiser, then
    cross-entropy training of the adapting prompts with the boosting prompts frozen."""

    config_class = CasPLConfig

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames, cfg: CasPLConfig) -> CasPLModel:
        teacher = None
        if cfg.boost_epochs:
            from ctta.backbones.clip import create_clip

            big, _, tok = create_clip(cfg.teacher_model, cfg.teacher_pretrained)
            teacher = (big.requires_grad_(False).eval(), tok)
        return CasPLModel(clip_model, tokenizer, classnames, cfg, generator=init_generator(cfg), teacher=teacher)

    def make_optimizer(self, **kwargs) -> None:
        m = self.model
        if not m.boosted and getattr(self, "dataloader", None) is not None and self.cfg.boost_epochs:
            self.boost()
        boost = {id(p) for p in [*m.boost_text, *m.boost_vision]}
        for p in m.parameters():
            if id(p) in boost:
                p.requires_grad_(False)
        super().make_optimizer(**kwargs)

    def boost(self) -> None:
        """Phase 1: distil the KD teacher into the boosting prompts on the experience's images (labels unused)."""
        m, cfg = self.model, self.cfg
        params = [*m.boost_text, *m.boost_vision]
        adapting = [p for p in m.parameters() if p.requires_grad and all(p is not q for q in params)]
        for p in adapting:
            p.requires_grad_(False)
        opt = torch.optim.SGD(params, lr=cfg.boost_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        m.train()
        for _ in range(cfg.boost_epochs):
            for batch in self.dataloader:
                x = batch[0].to(self.device)
                loss = kd_loss(m(x), m.teacher_logits(x, cfg.teacher_template), cfg.kd_temperature)
                opt.zero_grad()
                loss.backward()
                opt.step()
        for p in adapting:
            p.requires_grad_(True)
        m.boosted = True
