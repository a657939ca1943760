"""Prompt-CAM: one deep prompt per class, read at the output as that class's token, scored by a shared head.

Paper: Chowdhury et al., "Prompt-CAM: Making Vision Transformers Interpretable for Fine-Grained Analysis", CVPR 2025.
Reference: Imageomics/Prompt_CAM @ 7722fc2 (MIT; ``model/vpt.py``, ``model/vision_transformer.py``,
``engine/trainer.py``, ``engine/optimizer.py``), re-implemented from ``remaining-seed-systems.md`` A1 (no code
copied). The frozen ViT runs ``ctta.backbones.vit_attention.class_token_forward``: prompts ``(depth, P, D)`` with
``P = num_classes`` join every block (deep VPT, outputs dropped) and at the last block they are kept; after the
final norm a shared ``Linear(D, 1)`` scores prompt ``c`` as class ``c``'s logit. Loss: cross-entropy. Optimiser:
SGD (momentum 0.9, weight decay ``weight_decay``) over prompts and head; learning rate per epoch as timm's
``CosineLRScheduler(t_initial=epochs, warmup_t=warmup_epochs, warmup_lr_init, lr_min)`` (so with the official
``warmup_lr_init=0`` the first epoch runs at lr 0). ``ctta explain`` (``ctta.runner.explain``) draws the trait maps.

Data: the official pipeline (train ``Resize(240, 240)`` -> ``RandomCrop(224)`` -> ``HFlip``, test ``Resize(224,
224)``, Inception mean/std 0.5 for every backbone) is the class-incremental scenario's ``transform: promptcam`` and
``normalize: inception``, set in ``configs/promptcam.yaml``.

Deviations: trained with ``EpochTemplate`` (one experience = the full training set; in a class-incremental stream
every experience trains the same ``num_classes`` prompts); prompt dropout is applied to the prompt parameters
(``vpt_dropout``), as the reference; the reference's per-update scheduler calls are not reproduced (per epoch only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ctta.backbones.vit import PromptedViT
from ctta.backbones.vit_attention import class_token_forward
from ctta.fields import ranged
from ctta.registry import STRATEGIES
from ctta.templates import OnlineCLTemplate
from ctta.templates.vit_epoch import PromptedViTEpochTemplate

__all__ = [
    "PromptCAMConfig", "PromptCAMOnlineConfig", "PromptCAMModel", "PromptCAM", "PromptCAMOnline", "cosine_warmup_lr",
]


@dataclass(frozen=True)
class PromptCAMConfig:
    lr: float = ranged(0.005, gt=0)  # SGD; official CUB/Dogs/Pets 0.005, Cars/Birds-525 0.01
    weight_decay: float = ranged(1e-3, ge=0)
    momentum: float = ranged(0.9, ge=0)
    epochs: int = ranged(130, ge=1)  # official CUB 130, others 100
    warmup_epochs: int = ranged(20, ge=0)
    warmup_lr_init: float = ranged(0.0, ge=0)
    lr_min: float = ranged(1e-6, ge=0)
    vpt_dropout: float = ranged(0.1, ge=0, lt=1)
    batch_size: int = 16
    eval_batch_size: int = 64


def cosine_warmup_lr(epoch: int, cfg: PromptCAMConfig) -> float:
    """timm ``CosineLRScheduler`` value at ``epoch`` (linear warm-up, then cosine over ``t_initial=epochs``)."""
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr_init + epoch * (cfg.lr - cfg.warmup_lr_init) / cfg.warmup_epochs
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * epoch / cfg.epochs))


class PromptCAMModel(nn.Module):
    """Frozen ``PromptedViT`` + class prompts ``(depth, num_classes, D)`` + shared scalar head."""

    def __init__(self, backbone: nn.Module, num_classes: int, vpt_dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = (backbone if isinstance(backbone, PromptedViT) else PromptedViT(backbone)).requires_grad_(False)
        d, patch = self.backbone.embed_dim, self.backbone.vit.patch_embed.patch_size[0]
        bound = math.sqrt(6.0 / float(3 * patch * patch + d))  # VPT's Xavier-like init
        self.prompts = nn.Parameter(torch.empty(self.backbone.depth, num_classes, d).uniform_(-bound, bound))
        self.prompt_dropout = nn.Dropout(vpt_dropout)
        self.head = nn.Linear(d, 1)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        return self

    def forward_with_attention(self, x: torch.Tensor, blur_heads=(), blur_rows=None):
        """``(logits (B, P), last-block attention (B, H, P+T, P+T))``; ``blur_*`` as ``class_token_forward``."""
        feats, probs = class_token_forward(self.backbone, x, self.prompt_dropout(self.prompts), blur_heads, blur_rows)
        return self.head(feats).squeeze(-1), probs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_attention(x)[0]


@STRATEGIES.register("promptcam", config=PromptCAMConfig)
class PromptCAM(PromptedViTEpochTemplate):
    """Prompt-CAM on a frozen ViT, trained in epochs (full training set per experience).

    ``model``: a timm ViT (``num_classes=0``), a ``PromptedViT`` or a ``PromptCAMModel``; the optimiser is the
    method's (SGD with warm-up + cosine per epoch), the loss cross-entropy over the class-prompt logits.
    """

    config_class = PromptCAMConfig
    model_class = PromptCAMModel
    optimizer_refusal = "Prompt-CAM builds SGD over its prompts and head with a per-epoch cosine schedule; set lr"
    criterion_refusal = "Prompt-CAM's loss is cross-entropy over the class-prompt logits"

    def build_model(self, backbone: nn.Module, experience) -> PromptCAMModel:
        return PromptCAMModel(backbone, self.class_count(), self.cfg.vpt_dropout)

    def make_optimizer(self, **kwargs: Any) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        cfg = self.cfg
        self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self._epoch = 0

    def _before_training_epoch(self, **kwargs: Any) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = cosine_warmup_lr(self._epoch, self.cfg)
        self._epoch += 1
        super()._before_training_epoch(**kwargs)



@dataclass(frozen=True)
class PromptCAMOnlineConfig:
    lr: float = ranged(0.005, gt=0)  # SGD momentum 0.9, as the epoch recipe (constant lr online)
    weight_decay: float = ranged(1e-3, ge=0)
    vpt_dropout: float = ranged(0.0, ge=0, lt=1)
    online_iters: int = ranged(3, ge=1)
    batch_size: int = 16  # incoming stream batch
    eval_every: int = 1000  # samples between anytime evaluations (<= 0: task ends only)
    eval_batch_size: int = 64


@STRATEGIES.register("promptcam_online", config=PromptCAMOnlineConfig)
class PromptCAMOnline(OnlineCLTemplate):
    """Prompt-CAM trained online (ctta's extension, not in the paper): any class-incremental or Si-Blurry stream.

    One class prompt per label position; ``OnlineCLTemplate`` masks the logits of classes not seen yet, so a class's
    prompt starts training when the class appears. Checkpoints (``log.checkpoint_every``) hold the prompts and head,
    which ``ctta explain --checkpoint`` reads.
    """

    config_class = PromptCAMOnlineConfig
    model_class = PromptCAMModel

    def build_model(self, backbone: nn.Module, num_classes: int) -> PromptCAMModel:
        return PromptCAMModel(backbone, num_classes, self.cfg.vpt_dropout)

    def reference_optimizer(self, params) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=self.cfg.lr, momentum=0.9, weight_decay=self.cfg.weight_decay)

    def forward_logits(self) -> torch.Tensor:
        return self.model(self.mb_x)
