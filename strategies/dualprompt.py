"""DualPrompt baseline on Si-Blurry streams (Wang et al., "DualPrompt: Complementary Prompting for
Rehearsal-free Continual Learning", ECCV 2022, arXiv 2204.04799), as run by the Si-Blurry/MVP paper
(Moon et al., ICCV 2023, arXiv 2308.09303).

Reference: moonjunyyy/Si-Blurry@c4024ce ``models/dualprompt.py`` run through the ER trainer
``methods/er_baseline.py`` (``--mode er --model_name dualprompt``), re-implemented; no code copied.

Model: frozen ViT (``vit_base_patch16_224.orig_in21k``). G-prompt: 5 tokens at each of layers 0-1, shared by
all images. E-prompt: a pool of 10 (key, prompt) pairs (``ctta.prompts.PromptPool``), 20 tokens at each of layers
2-4; the prompt is chosen task-free by key matching (top-1 of ``1 - cos(q, key)``, q = final-layer normed CLS of
the un-prompted image) at training and test time. Prompt tuning as in MVP (tokens appended before their layer,
outputs dropped after it; G before E in a shared layer) but with ``pos_embed[:, :1]`` (the CLS position
embedding) added to every prompt token. Init U(-1, 1). Feature = CLS after the final norm; linear head
(trunc-normal 0.02, zero bias) + seen-class mask. Loss: CE + ``pull_weight`` (1.0) x mean(1 - cos(q, k_selected)).

Official behaviour reproduced: the ER trainer's CutMix (p=0.5, alpha 1) on top of the batch-shared AutoAugment
(``cutmix_prob=0`` disables it); replay memory 0 for CIFAR-100 but 2000 for Tiny-ImageNet and ImageNet-R in the
official scripts (set per dataset in ``configs/dualprompt_siblurry.yaml``'s ``_datasets_``, flagged there).

Deviations: the reference's G-prompt is a 1-entry pool whose key is never used; here it is a plain parameter
(768 fewer trainable parameters, same function). No prefix-tuning variant (unused by the published runs).
Global-RNG consumption differs (CutMix draws use torch instead of numpy).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ctta.prompts import PromptPool, fit_prompt_layers
from ctta.registry import STRATEGIES
from ctta.templates.prompt_er import PromptERConfig, PromptERTemplate, cls_position, make_head


@dataclass(frozen=True)
class DualPromptConfig(PromptERConfig):
    """DualPrompt on Si-Blurry (reference defaults).

    Attributes:
        pool_size: E-prompt pool size.
        g_layers: layers receiving G-prompt tokens.
        g_length: G tokens per layer.
        e_layers: layers receiving E-prompt tokens. The default layers (0, 1) and (2, 3, 4) are cut to a shallower
            ViT's depth (``ctta.prompts.layers``: depth 4 gives E on (2, 3)).
        e_length: E tokens per layer.
        pull_weight: weight of the key pull loss mean(1 - cos(q, k_selected)).
    """

    pool_size: int = 10
    g_layers: tuple[int, ...] = (0, 1)
    g_length: int = 5
    e_layers: tuple[int, ...] = (2, 3, 4)
    e_length: int = 20
    pull_weight: float = 1.0


class DualPromptModel(nn.Module):
    """Frozen ``PromptedViT`` + G-prompt + E-prompt pool + linear head over ``num_classes`` positions.

    Args:
        backbone: a frozen ``ctta.backbones.vit.PromptedViT``.
        num_classes: head width.
        pool_size, g_layers, g_length, e_layers, e_length: prompt layout.
        pull_weight: weight of the key pull loss returned by ``aux_loss``.
    """

    def __init__(self, backbone, num_classes, pool_size=10, g_layers=(0, 1), g_length=5, e_layers=(2, 3, 4),
                 e_length=20, pull_weight=1.0) -> None:  # fmt: skip
        super().__init__()
        g_layers, e_layers = fit_prompt_layers("DualPrompt", g_layers, e_layers, backbone.depth)  # paper layout cut
        if len(set(g_layers)) != len(g_layers) or g_length < 1:
            raise ValueError(f"DualPrompt: g_layers must be distinct and g_length >= 1; got {g_layers}, {g_length}")
        self.backbone = backbone.requires_grad_(False)
        d = backbone.embed_dim
        self.g_layers, self.g_length = tuple(g_layers), int(g_length)
        self.g_prompts = nn.Parameter(torch.empty(len(g_layers) * g_length, d).uniform_(-1.0, 1.0))  # (nG*Lg, D)
        self.e_pool = PromptPool(pool_size, d, e_length, e_layers, key_init="uniform", prompt_init="uniform")
        self.head = make_head(d, num_classes)
        self.pull_weight = pull_weight
        self.selected_distance: torch.Tensor | None = None

    def train(self, mode: bool = True) -> DualPromptModel:
        super().train(mode)
        self.backbone.eval()
        return self

    def layer_prompts(self, idx: torch.Tensor) -> dict[int, torch.Tensor]:
        """``{layer: (B, L, D) or shared (L, D)}`` prompt tokens (CLS position embedding added; G before E)."""
        pos = cls_position(self.backbone)  # (1, D)
        prompts = {layer: t + pos for layer, t in self.e_pool.tokens(idx).items()}  # (B, Le, D)
        g = (self.g_prompts + pos).view(len(self.g_layers), self.g_length, -1)  # (nG, Lg, D)
        for i, layer in enumerate(self.g_layers):
            if layer in prompts:
                e = prompts[layer]
                prompts[layer] = torch.cat([g[i].expand(len(e), -1, -1), e], dim=1)
            else:
                prompts[layer] = g[i]  # shared by the batch
        return prompts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bb = self.backbone
        tokens = bb.embed(x)  # (B, 1+N, D)
        q = bb.query(None, final_norm=True, tokens=tokens)  # (B, D), no grad
        sel = self.e_pool.select(q, top_k=1, penalty="none")
        feats = bb.forward_features(None, prompts=self.layer_prompts(sel.idx), tokens=tokens)  # (B, 1+N, D)
        self.selected_distance = sel.selected_distance  # (B, 1), gradient to the keys
        return self.head(feats[:, 0])  # (B, C)

    def aux_loss(self) -> torch.Tensor:
        """Pull loss ``pull_weight * mean(1 - cos(q, k_selected))`` of the last training forward."""
        if self.selected_distance is None:
            return torch.zeros((), device=self.head.weight.device)
        return self.pull_weight * self.selected_distance.mean()


@STRATEGIES.register("dualprompt", config=DualPromptConfig)
class DualPrompt(PromptERTemplate):
    """DualPrompt (task-free E-prompt selection) with the Si-Blurry reference's training protocol."""

    config_class = DualPromptConfig
    model_class = DualPromptModel

    def build_model(self, backbone: nn.Module, num_classes: int) -> DualPromptModel:
        cfg = self.cfg
        return DualPromptModel(backbone, num_classes, cfg.pool_size, cfg.g_layers, cfg.g_length, cfg.e_layers,
                               cfg.e_length, cfg.pull_weight)  # fmt: skip
