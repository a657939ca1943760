"""MULTI-LANE settings (``multilane`` strategy); defaults are the official COCO ones (see ``strategy.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from ctta.fields import ranged


@dataclass(frozen=True)
class MultiLaneConfig:
    num_tasks: int | None = None  # lanes to allocate (None: number of training experiences)
    num_selectors: int = 20  # S (COCO/CIFAR/ImageNet-R 20, VOC 10)
    num_prompts: int = 20  # P prefix tokens per head (COCO/CIFAR/ImageNet-R 20, VOC 10)
    num_prompt_layers: int = 5  # L_p: prompts in the first L_p blocks (ImageNet-R 12)
    epochs: int = ranged(30, ge=1)  # per task (COCO/VOC 30, CIFAR/ImageNet-R 50)
    batch_size: int = ranged(128, ge=1)  # COCO 128, VOC 256, CIFAR/ImageNet-R 1024
    lr: float = ranged(0.015, gt=0)  # used lr = base_lr x batch / 256 (COCO 0.03 -> 0.015; VOC 0.05; CIL 0.01 -> 0.04)
    eval_batch_size: int = 24
    pre_head_normalize: bool = True  # L2-normalise the lane feature before the head (official since 088cce2)
    normalize_input: bool = False  # apply ImageNet mean/std to the [0, 1] input (reference: off)
    head_mode: str = "concat"  # concat | task (TaskIdentifier ablation)
    drop_and_replace: bool = True  # False: summarise in block 0 only, then plain lane self-attention
    summarizer: str = "selectors"  # selectors | tome (ToMe merging of the frozen tokens, S = 0)
    tome_k: int = 30  # ToMe: merge until <= tome_k tokens remain
    bce_reduction: str = "mean"  # mean over B x C_total (reference) | task_columns (mean over B x |C_t|)
    clip_grad_norm: float | None = None  # configured but never applied in the reference
    map_no_positive: str = "skip"  # mAP for classes without positives: skip (reference) | zero
    num_workers: int = 0
