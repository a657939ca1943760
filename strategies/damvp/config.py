"""DAM-VP settings (``damvp`` strategy); defaults are the official ones (see ``strategy.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from ctta.fields import ranged


@dataclass(frozen=True)
class DAMVPConfig:
    backbone_key: str = "vit-b-1k"  # vit-b-1k | vit-b-22k | clip-vit-b | clip-resnet50: tau, phi, head, meta_lr
    adapt_method: str = "auto"  # auto (by backbone_key) | prompt_wo_head | prompt_w_head
    feature: str = "auto"  # auto | cls | pre_logits_tanh | clip_logits (phi)
    tau: float | None = None  # clustering threshold; None: reference value per backbone (CLIP: per dataset)
    lr: float = ranged(1e4, gt=0)  # official default --lr; per-dataset values in the paper's Tables 13-14
    weight_decay: float = 0.0
    head_lr: float = 0.1
    epochs: int = ranged(50, ge=1)
    batch_size: int = ranged(128, ge=1)
    eval_batch_size: int = 256
    pad_width: int = 30  # prompt width at 224 px (69,840 parameters)
    seed: int = 2023  # noise read-out and prompt init
    n_noise: int = 512
    max_cluster_samples: int = 1000
    cluster_source: str = "train_loader"  # train_loader (reference) | eval_transform (deterministic)
    diversity_adaptive: bool = True  # False: one prompt, no clustering/routing (--wo_da)
    head_tuning_optimizer: str = "official"  # official (momentum 0, head at prompt lr) | fixed
    snapshot_head_with_best_val: bool = False
    legacy_zero_grad: bool = True
    test_every_epochs: int = 5  # periodic test of the best-val prompts (<= 0: off)
    meta_prompt_path: str = ""  # theta_meta checkpoint ("" = randn)
    representation_path: str = ""  # vit-b-22k: original in21k checkpoint holding pre_logits.fc
    stream_meta_update: bool = True  # Reptile step of theta_meta toward each finished dataset's prompts
    stream_meta_step_size: float = 0.5
    meta_lr: float | None = None  # offline meta-training; None: 0.5 / 1.0 per backbone
    meta_step_size: float = 0.5
    update_step: int = 8
    meta_weight_decay: float = 1e-4
