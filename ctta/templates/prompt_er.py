"""The online ER-trainer protocol shared by L2P and DualPrompt on Si-Blurry streams.

Reference: moonjunyyy/Si-Blurry@c4024ce ``methods/er_baseline.py`` (the ER trainer both baselines run through with
``--mode er``), re-implemented; no code copied. ``PromptERTemplate``: the benchmark's batch-shared augmentation,
replay composition, CutMix on the whole update batch (probability 0.5, alpha 1: the trainer's default
``transforms=['cutmix', 'autoaug']``), CE over exposed positions plus the prompt model's ``aux_loss()``; Adam with a
constant learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ctta.data.siblurry_aug import cutmix
from ctta.fields import ranged
from ctta.templates.online import OnlineCLTemplate, OnlineConfig

__all__ = ["PromptERConfig", "PromptERTemplate", "cls_position", "make_head"]


@dataclass(frozen=True)
class PromptERConfig(OnlineConfig):
    """Training protocol shared by L2P and DualPrompt (the reference's ER trainer): ``OnlineConfig``'s fields
    (``online_iters``, ``batch_size``, ``eval_every``, ``eval_batch_size``, ``memory_size``, ``memory_batch_size``)
    plus:

    Attributes:
        lr: Adam learning rate (constant; weight decay 0).
        cutmix_prob: probability of CutMix per update (ER trainer default 0.5; 0 disables).
        cutmix_alpha: CutMix Beta parameter.
    """

    lr: float = ranged(5e-3, gt=0)
    cutmix_prob: float = 0.5
    cutmix_alpha: float = 1.0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.online_iters < 1 or self.memory_size < 0 or self.memory_batch_size < 0:
            raise ValueError(f"{type(self).__name__}: need lr > 0, online_iters >= 1, memory sizes >= 0")
        if not 0.0 <= self.cutmix_prob <= 1.0 or self.cutmix_alpha <= 0:
            raise ValueError(f"{type(self).__name__}: cutmix_prob must be in [0, 1] and cutmix_alpha > 0")


def cls_position(backbone: nn.Module) -> torch.Tensor:
    """The CLS token's positional embedding ``(1, D)`` of a ``PromptedViT`` (added to L2P/DualPrompt prompts)."""
    vit = backbone.vit
    if getattr(vit, "cls_token", None) is None or getattr(vit, "no_embed_class", False):
        raise ValueError("L2P/DualPrompt prompts need a ViT with a CLS token that has a position embedding")
    return vit.pos_embed[:, 0]


def make_head(dim: int, num_classes: int) -> nn.Linear:
    """Linear head with timm's default init (trunc-normal std 0.02, zero bias)."""
    head = nn.Linear(dim, num_classes)
    nn.init.trunc_normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    return head


class PromptERTemplate(OnlineCLTemplate):
    """Online ER-trainer protocol for prompt models that expose ``aux_loss()`` (see module docstring).

    ``optimizer=None``: Adam at the config's ``lr`` (a user optimiser is re-pointed at the trainable parameters).
    The loss (CE with CutMix over exposed positions + the model's auxiliary loss) is the protocol's: ``criterion``
    is refused. Methods set ``config_class`` / ``model_class`` and implement ``build_model(backbone, num_classes)``.
    """

    config_class = PromptERConfig
    criterion_refusal = (
        "the ER-trainer loss is cross-entropy over exposed classes with CutMix plus the prompt model's auxiliary "
        "loss (set cutmix_prob, cutmix_alpha and the method's loss weights instead)"
    )

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cutmix_prob, self.cutmix_alpha = float(self.cfg.cutmix_prob), float(self.cfg.cutmix_alpha)
        self._mix: tuple[torch.Tensor, float] | None = None  # (perm, lam) of the current update

    def reference_optimizer(self, params) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=self.cfg.lr)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """The benchmark's batch augmentation, then CutMix with probability ``cutmix_prob`` (whole update batch)."""
        x, self._mix = super().augment(x), None
        if self.cutmix_prob > 0 and float(torch.rand(())) < self.cutmix_prob:
            x, perm, lam = cutmix(x, self.cutmix_alpha)
            self._mix = (perm, lam)
        return x

    def forward_logits(self) -> torch.Tensor:
        return self.model(self.mb_x)  # (B, num_classes) over exposed positions

    def loss_inputs(self) -> dict:
        return {"mb_logits_pos": self.mb_logits_pos, "model.selected_distance": self.model.selected_distance}

    def criterion(self) -> torch.Tensor:
        if not self.is_training:
            return super().criterion()
        logits, y = self.mb_logits_pos, self.mb_y_pos  # (B, C), (B,)
        if self._mix is None:
            ce = F.cross_entropy(logits, y)
        else:
            perm, lam = self._mix
            ce = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm])
        return ce + self.model.aux_loss()
