"""L2P baseline on Si-Blurry streams (Wang et al., "Learning to Prompt for Continual Learning", CVPR 2022,
arXiv 2112.08654), as run by the Si-Blurry/MVP paper (Moon et al., ICCV 2023, arXiv 2308.09303).

Reference: moonjunyyy/Si-Blurry@c4024ce ``models/l2p.py`` run through the ER trainer ``methods/er_baseline.py``
(``--mode er --model_name l2p``), re-implemented; no code copied.

Model: frozen ViT (``vit_base_patch16_224.orig_in21k``); pool of 10 keys/prompts (U(-1, 1) init), each prompt
5 tokens; the query is the final-layer normed CLS token of the un-prompted image; the top-5 prompts by
``1 - cos(q, key)`` are concatenated (25 tokens), get ``pos_embed[0]`` (the CLS position embedding) added and
enter before block 0, kept through all blocks; the feature is the mean of the prompt-token outputs after the
final norm; a linear head (trunc-normal 0.02, zero bias) gives the logits, plus the seen-class mask.

Official quirks reproduced by default (named options select the alternative):
- The key-matching loss is never added (the reference stores it in a local variable), so the keys are never
  trained: ``l2p_train_keys=True`` adds ``key_loss_weight * mean(1 - cos(q, k_selected))`` (0.5, the
  reference's ``lambd``).
- The frequency "diversity" re-weighting has no effect (its counter is never folded in): plain top-k.
- ER-trainer training batch: CutMix with probability 0.5 (alpha 1) on top of the batch-shared AutoAugment
  (the trainer's default ``transforms=['cutmix', 'autoaug']``): ``cutmix_prob=0`` disables it; optional
  reservoir replay (``memory_size``; 0 for L2P in the official scripts), 32 memory + 64 stream samples.

Deviations: prompt tokens are appended after the patch tokens instead of inserted after CLS (equivalent: the
order of tokens does not change a ViT block's per-token outputs once positional embeddings are added);
global-RNG consumption differs from the reference (CutMix draws use torch instead of numpy).

The ER-trainer protocol shared with DualPrompt (batch-shared augmentation of the benchmark, replay composition,
CutMix, CE over exposed positions plus the model's auxiliary loss) is ``ctta.templates.prompt_er.PromptERTemplate``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ctta.prompts import PromptPool
from ctta.registry import STRATEGIES
from ctta.templates.prompt_er import PromptERConfig, PromptERTemplate, cls_position, make_head


# ----------------------------------------------------------------------------------------------------- L2P
@dataclass(frozen=True)
class L2PConfig(PromptERConfig):
    """L2P on Si-Blurry (reference defaults).

    Attributes:
        pool_size: number of (key, prompt) pairs.
        top_k: prompts selected per image.
        prompt_length: tokens per prompt.
        l2p_train_keys: add the key-matching loss (the reference never does; keys stay at their init).
        key_loss_weight: weight of the key-matching loss when ``l2p_train_keys``.
    """

    pool_size: int = 10
    top_k: int = 5
    prompt_length: int = 5
    l2p_train_keys: bool = False
    key_loss_weight: float = 0.5


class L2PModel(nn.Module):
    """Frozen ``PromptedViT`` + L2P prompt pool + linear head over ``num_classes`` positions.

    Args:
        backbone: a frozen ``ctta.backbones.vit.PromptedViT``.
        num_classes: head width.
        pool_size, top_k, prompt_length: pool shape and selection size.
        train_keys: whether ``aux_loss`` returns the weighted key-matching loss.
        key_loss_weight: its weight.
    """

    def __init__(self, backbone, num_classes, pool_size=10, top_k=5, prompt_length=5, train_keys=False,
                 key_loss_weight=0.5) -> None:  # fmt: skip
        super().__init__()
        if not 1 <= top_k <= pool_size:
            raise ValueError(f"L2P needs 1 <= top_k <= pool_size, got top_k={top_k}, pool_size={pool_size}")
        self.backbone = backbone.requires_grad_(False)
        d = backbone.embed_dim
        self.pool = PromptPool(pool_size, d, prompt_length, (0,), key_init="uniform", prompt_init="uniform")
        self.head = make_head(d, num_classes)
        self.top_k, self.train_keys, self.key_loss_weight = top_k, train_keys, key_loss_weight
        self.selected_distance: torch.Tensor | None = None

    def train(self, mode: bool = True) -> L2PModel:
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bb = self.backbone
        tokens = bb.embed(x)  # (B, 1+N, D)
        q = bb.query(None, final_norm=True, tokens=tokens)  # (B, D), no grad
        sel = self.pool.select(q, top_k=self.top_k, penalty="none")
        prompts = self.pool.tokens(sel.idx)[0] + cls_position(bb)  # (B, k*L, D)
        feats = bb.forward_features(None, prompts={0: prompts}, keep_prompts=True, tokens=tokens)  # (B, T, D)
        self.selected_distance = sel.selected_distance  # (B, k), gradient to the keys
        return self.head(feats[:, -prompts.shape[1] :].mean(1))  # (B, C)

    def aux_loss(self) -> torch.Tensor:
        """``key_loss_weight * mean(1 - cos(q, k_selected))`` if ``train_keys``, else 0 (reference quirk)."""
        if not self.train_keys or self.selected_distance is None:
            return torch.zeros((), device=self.head.weight.device)
        return self.key_loss_weight * self.selected_distance.mean()


@STRATEGIES.register("l2p", config=L2PConfig)
class L2P(PromptERTemplate):
    """L2P with the Si-Blurry reference's quirks (keys never trained unless ``l2p_train_keys``)."""

    config_class = L2PConfig
    model_class = L2PModel

    def build_model(self, backbone: nn.Module, num_classes: int) -> L2PModel:
        cfg = self.cfg
        return L2PModel(backbone, num_classes, cfg.pool_size, cfg.top_k, cfg.prompt_length, cfg.l2p_train_keys,
                        cfg.key_loss_weight)  # fmt: skip
