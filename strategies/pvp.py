"""PVP (UNOFFICIAL, from the paper): pre-train deep visual prompts on a source dataset, then tune them few-shot.

Paper: Song et al., "Pre-trained Visual Parameter-efficient Tuning" / "PVP: Pre-trained Visual Parameter-Efficient
Tuning" (arXiv 2304.13639). No official code or configs exist (``remaining-seed-systems.md`` A3); this is ctta's
reading of the paper for the VPT module only (no LoRA / adapter variants). Model: deep VPT on a frozen ViT
(``n_prompts`` tokens per layer acting through every block's keys/values, ``PromptedViT.forward_features``) and a
linear head on the CLS token. Two stages, two runs of the same strategy:

1. ``stage: pretrain`` on a large source (ImageNet in the paper): trains prompts and head; at the end of every
   experience the prompts are written to ``prompts_file`` (``{"prompts": (depth, n_prompts, D)}``).
2. ``stage: finetune`` on the few-shot target: the prompts start from ``prompts_file``, the head is new.

Both stages: SGD (momentum 0.9) with a cosine learning rate per epoch, cross-entropy. Deviations: the paper gives no
per-dataset recipe in code; the defaults (lr 0.01, wd 1e-4, 10 prompts, 100 epochs) are ctta's choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctta.backbones.vit import PromptedViT
from ctta.fields import ranged
from ctta.registry import STRATEGIES
from ctta.templates.vit_epoch import PromptedViTEpochTemplate

__all__ = ["PVPConfig", "DeepVPTClassifier", "PVP"]


@dataclass(frozen=True)
class PVPConfig:
    stage: str = "pretrain"  # pretrain (source; writes prompts_file) | finetune (few-shot target; reads it)
    prompts_file: str = ""  # stage 1 output / stage 2 input ("" in pretrain: not written)
    n_prompts: int = ranged(10, ge=1)
    lr: float = ranged(0.01, gt=0)  # SGD momentum 0.9, cosine per epoch (ctta's choice: the paper gives no recipe)
    weight_decay: float = ranged(1e-4, ge=0)
    epochs: int = ranged(100, ge=1)
    batch_size: int = 32
    eval_batch_size: int = 128

    def __post_init__(self) -> None:
        if self.stage not in ("pretrain", "finetune"):
            raise ValueError(f"stage must be 'pretrain' or 'finetune', got {self.stage!r}")
        if self.stage == "finetune" and not self.prompts_file:
            raise ValueError("stage 'finetune' needs prompts_file (the prompts written by the 'pretrain' run)")


class DeepVPTClassifier(nn.Module):
    """Frozen ``PromptedViT`` + deep prompts ``(depth, n_prompts, D)`` (keys/values of every block) + linear head."""

    def __init__(self, backbone: nn.Module, num_classes: int, n_prompts: int) -> None:
        super().__init__()
        self.backbone = (backbone if isinstance(backbone, PromptedViT) else PromptedViT(backbone)).requires_grad_(False)
        d, patch = self.backbone.embed_dim, self.backbone.vit.patch_embed.patch_size[0]
        bound = math.sqrt(6.0 / float(3 * patch * patch + d))  # VPT's init
        self.prompts = nn.Parameter(torch.empty(self.backbone.depth, n_prompts, d).uniform_(-bound, bound))
        self.head = nn.Linear(d, num_classes)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prompts = {i: p for i, p in enumerate(self.prompts)}
        return self.head(self.backbone(x, prompts=prompts))


@STRATEGIES.register("pvp", config=PVPConfig)
class PVP(PromptedViTEpochTemplate):
    """PVP (unofficial): deep VPT pre-trained on a source (``stage: pretrain``), then tuned few-shot (``finetune``)."""

    config_class = PVPConfig
    model_class = DeepVPTClassifier
    optimizer_refusal = "PVP builds SGD over its prompts and head with a per-epoch cosine schedule; set lr"
    criterion_refusal = "PVP's loss is cross-entropy"

    def build_model(self, backbone: nn.Module, experience) -> DeepVPTClassifier:
        model = DeepVPTClassifier(backbone, self.class_count(), self.cfg.n_prompts)
        if self.cfg.stage == "finetune":
            path = Path(self.cfg.prompts_file).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"PVP prompts_file not found: {path} (run the stage 'pretrain' config first)")
            prompts = torch.load(path, map_location="cpu", weights_only=True)["prompts"]
            if prompts.shape != model.prompts.shape:
                raise ValueError(f"{path} holds prompts {tuple(prompts.shape)}; this model needs "
                                 f"{tuple(model.prompts.shape)} (same backbone and n_prompts as stage 1)")  # fmt: skip
            model.prompts.data.copy_(prompts)
        return model

    def make_optimizer(self, **kwargs: Any) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=self.cfg.lr, momentum=0.9, weight_decay=self.cfg.weight_decay)
        self._epoch = 0

    def _before_training_epoch(self, **kwargs: Any) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = 0.5 * self.cfg.lr * (1 + math.cos(math.pi * self._epoch / self.train_epochs))
        self._epoch += 1
        super()._before_training_epoch(**kwargs)

    def _after_training_exp(self, **kwargs: Any) -> None:
        super()._after_training_exp(**kwargs)
        if self.cfg.stage == "pretrain" and self.cfg.prompts_file:
            path = Path(self.cfg.prompts_file).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"prompts": self.model.prompts.detach().cpu()}, path)

