"""Epoch training of a classifier over a frozen prompted ViT, shared by Prompt-CAM, TCPA and PVP.

The method's model is built before the first experience from the benchmark's class count; a plain timm ViT is
wrapped as ``PromptedViT``; train and eval forwards are ``model(x)``; the loss is cross-entropy (a method adds its
own terms by overriding ``criterion``). Methods still build their own optimiser (``make_optimizer``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ctta.backbones.vit import PromptedViT
from ctta.templates.benchmark_info import benchmark_info
from ctta.templates.epoch import EpochTemplate

__all__ = ["PromptedViTEpochTemplate"]


class PromptedViTEpochTemplate(EpochTemplate):
    """``EpochTemplate`` for a frozen-ViT classifier ``model_class(backbone, num_classes, ...)``."""

    @classmethod
    def benchmark_kwargs(cls, cfg, benchmark) -> dict[str, Any]:
        """The class count, so the model is built before the first experience."""
        return {"num_classes": benchmark_info(benchmark).n_classes}

    def prepare_backbone(self, model: nn.Module) -> nn.Module:
        return model if isinstance(model, PromptedViT) else PromptedViT(model)

    def forward_train(self) -> torch.Tensor:
        return self.model(self.mb_x)

    def forward_eval(self) -> torch.Tensor:
        return self.model(self.mb_x)

    def criterion(self) -> torch.Tensor:
        return F.cross_entropy(self.mb_output, self.mb_y)
