"""Baseline: shallow visual prompt tuning + linear head on a frozen ViT, trained online.

VPT-shallow (Jia et al., "Visual Prompt Tuning", ECCV 2022; reference KMnP/vpt, re-implemented): ``n_prompts``
learnable tokens enter before block 0 and are kept through every block; the classifier reads the CLS token
after the final norm. Trained with ``OnlineCLTemplate`` (``online_iters`` Adam updates per incoming batch,
seen-class logit mask, anytime evaluation), so it runs on any class-incremental or Si-Blurry stream.

Deviations from VPT: prompts are appended after the patch tokens rather than inserted after CLS (equivalent:
prompts carry no positional embedding and attention is permutation-equivariant); no prompt dropout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ctta.fields import ranged
from ctta.registry import STRATEGIES
from ctta.templates import OnlineCLTemplate


@dataclass(frozen=True)
class VPTConfig:
    n_prompts: int = 4
    lr: float = ranged(5e-3, gt=0)  # Adam
    online_iters: int = ranged(3, ge=1)
    batch_size: int = 64  # incoming stream batch (train_mb_size)
    eval_every: int = 1000  # samples between anytime evaluations (<= 0: task ends only)
    eval_batch_size: int = 128


class PromptedClassifier(nn.Module):
    """Frozen ``PromptedViT`` + shallow prompts + linear head over ``num_classes`` positions."""

    def __init__(self, backbone: nn.Module, num_classes: int, n_prompts: int) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False)
        d = backbone.embed_dim
        self.prompts = nn.Parameter(torch.empty(n_prompts, d).uniform_(-0.02, 0.02))  # (P, D)
        self.head = nn.Linear(d, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen backbone: no dropout / drop-path
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prompts = {0: self.prompts} if len(self.prompts) else None
        feats = self.backbone.forward_features(x, prompts=prompts, keep_prompts=True)  # (B, T, D)
        return self.head(self.backbone.pre_logits(feats))  # (B, num_classes)


@STRATEGIES.register("vpt", config=VPTConfig)
class VPT(OnlineCLTemplate):
    """Shallow prompt tuning + linear head on a frozen ViT (online baseline).

    ``model``: a timm ViT (``num_classes=0``), a ``PromptedViT`` or a ``PromptedClassifier``; ``optimizer=None``:
    Adam at ``lr``; any ``criterion`` (called on the position logits and labels; default cross-entropy).
    """

    config_class = VPTConfig
    model_class = PromptedClassifier

    def build_model(self, backbone: nn.Module, num_classes: int) -> PromptedClassifier:
        return PromptedClassifier(backbone, num_classes, self.cfg.n_prompts)

    def reference_optimizer(self, params) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=self.cfg.lr)

    def forward_logits(self) -> torch.Tensor:
        return self.model(self.mb_x)
