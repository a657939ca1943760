"""RESTORE: feature-shift consistency for multi-modal prompt learning (Yang et al., "RESTORE: Towards Feature Shift
for Vision-Language Prompt Learning", arXiv 2403.06136). Official code: Yaphabates/RESTORE_@4c64a17
``trainers/maple_fsa.py`` (trainer ``MaPLe_FSA``), ``train.py``, ``run_maple_fsa.sh`` (MIT, (c) 2024 Yaphabates;
behaviour read, re-implemented, no code copied). Spec: ``clip-prompt-learners.md`` sections 17 and 23.2.

Model: MaPLe's compound prompts (the core's ``CompoundPromptedCLIP``, as ``maple``'s and ``coprompt``'s models;
methods do not import each other) plus a text and a visual **feature calibrator**
``Cal(x) = x + FFN(LN(x))`` (``FFN = Linear(E -> 4E) -> QuickGELU -> Linear(4E -> E)``), mixed as
``r * Cal(x) + (1 - r) * x`` before the cosine logits. Loss: ``CE + fs_loss_r * sum_i (|T_i^T T_i|_F / |T_i^T
T_i|_F(init) - |V_i^T V_i|_F / |V_i^T V_i|_F(init))^2`` over the deep prompts ``T_i`` and their coupled vision
prompts ``V_i`` (``feature_shift_loss``); the reference norms are taken at the model's first forward (detached,
not saved: a resumed run re-takes them), so the loss is exactly 0 at the first step.

Official behaviour kept as the default (each with a switch, results with a switch on are non-official):

* the ratios ``r_text``, ``r_vis`` are **never trained** (the reference reads them with ``.item()``); once per
  training experience, after 0-based epoch ``epochs // 3``, each is raised by the current *absolute* prompt shift
  (``mean_i |T_i^T T_i|_F`` times ``text_shift_gain`` 0.02, ``mean_i |V_i^T V_i|_F`` times ``vis_shift_gain``
  0.005) and rounded to float32 (the reference replaces its float64 parameter by a float32 one).
  ``learn_ratios=True`` makes both ratios trainable parameters (``learned_ratios``) that receive the loss's
  gradient (the scheduled raise still applies); ``ratio_update=False`` keeps them at their start values;
* the coupling's input map ``proj`` and both calibrators start from **fp16-rounded** values (the reference casts
  them ``.half()`` in every precision, which crashes fp32 runs there); ``fp16_init=False`` keeps fp32 values;
* inserted prompts are fp16-rounded as in MaPLe (``round_prompts``).

Defaults: ``MaPLe_FSA/vit_b16_c2_ep5_batch4_2ctx.yaml`` (n_ctx 2, J = 9, SGD lr 0.0035, batch 4, **10 epochs**, the
file name says 5) with ``train.py``'s ratios (0.1, 0.1, fs 1.0: ``reset_cfg`` always overwrites the yaml's); the
per-dataset ratios of ``run_maple_fsa.sh`` are in ``configs/fewshot/restore_b2n.yaml``. Selection: last epoch.

Trainable parameters on ViT-B/16 (J = 9, n_ctx 2): 39 tensors (3J + 12, as the reference's), 7,756,544 values:
MaPLe's 3,555,072 (MaPLe's published 3.55M) + the two calibrators' 4,201,472 (no published RESTORE count found).

Shared pieces: ``FeatureCalibrator`` and ``ResidualMix`` (``ctta.clip_prompting.adapters``, shared with CoPrompt).

Deviations: the calibrators follow the run's dtype (fp16 on CUDA with ``prec: fp16``, else fp32) instead of fp16
always; the shift of the ratio update is computed in fp32; the ratios are float64 buffers of the ``ResidualMix``
modules (the reference: parameters, float64 then float32, outside the optimiser); text encoding as MaPLe's (exact
truncation, shared prefix).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ctta.clip_prompting.adapters import FeatureCalibrator, ResidualMix
from ctta.clip_prompting.compound import CompoundPromptedCLIP
from ctta.clip_prompting.template import PromptLearnerConfig, PromptLearnerTemplate, init_generator
from ctta.clip_prompting.vision import encode_image
from ctta.fields import ranged
from ctta.registry import STRATEGIES

__all__ = ["RESTORE", "RESTOREConfig", "RESTOREModel", "feature_shift_loss", "gram_norms"]


@dataclass(frozen=True)
class RESTOREConfig(PromptLearnerConfig):
    epochs: int = ranged(10, ge=1)
    batch_size: int = ranged(4, ge=1)
    lr: float = ranged(0.0035, gt=0)
    n_ctx: int = 2
    ctx_init: str = "a photo of a"
    depth: int = 9  # J: the input layer plus J-1 deep layers (both towers)
    vis_calib_r: float = 0.1  # r_vis at the start (train.py's argparse default; per dataset in run_maple_fsa.sh)
    text_calib_r: float = 0.1  # r_text at the start
    fs_loss_r: float = 1.0  # weight of the feature-shift consistency loss
    ratio_update: bool = True  # raise the ratios once after epoch epochs // 3 (official)
    text_shift_gain: float = 0.02
    vis_shift_gain: float = 0.005
    learn_ratios: bool = False  # non-official: the ratios are trained through the loss
    fp16_init: bool = True  # official: proj and the calibrators start from fp16-rounded values


def gram_norms(prompts: list[torch.Tensor]) -> torch.Tensor:
    """``(L,)``: ``|P_i^T P_i|_F`` of each prompt ``P_i`` ``(n, D)``, in fp32."""
    if not prompts:
        return torch.zeros(0)
    return torch.stack([torch.linalg.matrix_norm(p.float().t() @ p.float()) for p in prompts])


def feature_shift_loss(text, vision, ref_text: torch.Tensor, ref_vision: torch.Tensor) -> torch.Tensor:
    """``sum_i (|T_i^T T_i|_F / ref_text_i - |V_i^T V_i|_F / ref_vision_i)^2`` (0 for no deep prompts)."""
    if len(text) != len(vision):
        raise ValueError(f"{len(text)} text prompts but {len(vision)} vision prompts")
    if not text:
        return torch.zeros(())
    return ((gram_norms(text) / ref_text - gram_norms(vision) / ref_vision) ** 2).sum()


def _round_fp16_(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.half().to(p.dtype))


class RESTOREModel(CompoundPromptedCLIP):
    """MaPLe's prompts (``ctx``, ``deep_text``, ``coupling``: the core's ``CompoundPromptedCLIP``, as ``maple``'s
    model; ``prompts()`` gives ``(ctx, [T_i], V_0, [V_i])``, ``V_i`` before the fp16 rounding of insertion) +
    ``text_adapter`` / ``visual_adapter`` (``ResidualMix`` over a ``FeatureCalibrator``, the reference's attribute
    names) whose ratios are fixed floats (``learn_ratios``: the parameters ``learned_ratios``). In training mode
    ``forward`` leaves the feature-shift regulariser in ``self.fs_reg``."""

    def __init__(self, clip_model, tokenizer, classnames, cfg: RESTOREConfig = RESTOREConfig(), *, generator=None):
        super().__init__(clip_model, tokenizer, classnames, n_ctx=cfg.n_ctx, ctx_init=cfg.ctx_init, depth=cfg.depth,
                         truncate=cfg.truncate, round_prompts=cfg.round_prompts, generator=generator)  # fmt: skip
        dim = int(clip_model.text_projection.shape[-1])
        self.text_adapter = ResidualMix(FeatureCalibrator(dim, generator=generator), cfg.text_calib_r)
        self.visual_adapter = ResidualMix(FeatureCalibrator(dim, generator=generator), cfg.vis_calib_r)
        if cfg.fp16_init:
            for m in (self.coupling.proj, self.text_adapter, self.visual_adapter):
                _round_fp16_(m)
        self.learned_ratios = None
        if cfg.learn_ratios:
            values = {"text": cfg.text_calib_r, "visual": cfg.vis_calib_r}
            self.learned_ratios = nn.ParameterDict({k: nn.Parameter(torch.tensor(float(v))) for k, v in values.items()})
        self.ref_norms: tuple[torch.Tensor, torch.Tensor] | None = None  # taken at the first forward, never saved
        self.fs_reg = torch.zeros(())

    def ratios(self) -> tuple[float, float]:
        """``(r_text, r_vis)`` now."""
        if self.learned_ratios is not None:
            return float(self.learned_ratios["text"].detach()), float(self.learned_ratios["visual"].detach())
        return self.text_adapter.r, self.visual_adapter.r

    def _mix(self, which: str, x: torch.Tensor) -> torch.Tensor:
        mix = self.text_adapter if which == "text" else self.visual_adapter
        if self.learned_ratios is None:
            return mix(x)
        r = self.learned_ratios[which].to(x.dtype)
        return r * mix.module(x) + (1 - r) * x

    @torch.no_grad()
    def current_shift(self) -> tuple[float, float]:
        """``(mean_i |T_i^T T_i|_F, mean_i |V_i^T V_i|_F)`` over the deep prompts (absolute, not relative)."""
        _, deep, _, vs = self.prompts()
        if not deep:
            return 0.0, 0.0
        return float(gram_norms(deep).mean()), float(gram_norms(vs).mean())

    def raise_ratios(self, text_gain: float, vis_gain: float) -> None:
        """``r += gain * shift`` for both ratios, rounded to float32 (the reference's one ratio update)."""
        (t, v), (rt, rv) = self.current_shift(), self.ratios()
        self.text_adapter.set_ratio(rt + t * text_gain, dtype=torch.float32)
        self.visual_adapter.set_ratio(rv + v * vis_gain, dtype=torch.float32)
        if self.learned_ratios is not None:
            with torch.no_grad():
                self.learned_ratios["text"].fill_(self.text_adapter.r)
                self.learned_ratios["visual"].fill_(self.visual_adapter.r)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        ctx, deep, v0, vs = self.prompts()
        if self.ref_norms is None:
            self.ref_norms = (gram_norms(deep).detach(), gram_norms(vs).detach())
        if self.training:
            self.fs_reg = feature_shift_loss(deep, vs, *(r.to(ctx.device) for r in self.ref_norms)).to(ctx.device)
        g = self._mix("text", self.text(ctx, deep))
        f = self._mix("visual", encode_image(self.clip, images, v0, vs, round_prompts=self.round_prompts))
        return self.logits(f, g)


@STRATEGIES.register("restore", config=RESTOREConfig)
class RESTORE(PromptLearnerTemplate):
    """RESTORE as an Avalanche strategy (SGD, the template's schedule): MaPLe's prompts + calibrators, CE +
    feature-shift consistency; the ratio update after epoch ``epochs // 3`` of each training experience."""

    config_class = RESTOREConfig

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames, cfg: RESTOREConfig) -> RESTOREModel:
        return RESTOREModel(clip_model, tokenizer, classnames, cfg, generator=init_generator(cfg))

    def criterion(self) -> torch.Tensor:
        ce = self._criterion(self.mb_output, self.mb_y)
        if not self.is_training:
            return ce
        return ce + self.cfg.fs_loss_r * self.model.fs_reg.float()

    def epoch_end(self) -> None:
        done = self.scheduler.last_epoch if self.scheduler is not None else 0  # epochs finished in this experience
        if self.cfg.ratio_update and done - 1 == self.train_epochs // 3:
            self.model.raise_ratios(self.cfg.text_shift_gain, self.cfg.vis_shift_gain)
