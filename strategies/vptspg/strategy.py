"""VPTSP-G: visual prompt tuning with semantic proxies for deep metric learning (Ren et al., ICLR 2024,
"Learning Semantic Proxies from Visual Prompts for Parameter-Efficient Fine-Tuning in Deep Metric Learning").

Reference: Noahsark/ParameterEfficient-DML @ c7c9416 (MIT), re-implemented from reading (``main.py`` training loop,
``config/cub200_small.yaml`` defaults, ``architectures/peft_vit.py``, ``criteria/dml_proxy_peft.py``). The model is
``model.VPTSPGModel``; the loss, GRU cell and sampler are in ``parts``. Training: class-balanced batches (``P``
classes x ``k`` = 2 samples), Proxy-Anchor loss (alpha 32, delta 0.1) of the embeddings against all class proxies;
one SGD (momentum 0.9, wd 1e-6; AdamW as an option) with two groups, network lr 0.005 and proxy-bias lr 0.1 (the
reference's two optimisers, same schedule), cosine per epoch over ``cosine_length`` = 50 epochs (to 1e-8), 15
epochs. Evaluation: the embeddings of the test experience (``scenarios/retrieval.py``: unseen classes) give
Recall@1/2/4/8, MAP@R and NMI (``ctta.retrieval_metrics.RetrievalMetrics``, the run's summary metrics).

Deviations from the reference code:
- Memory bank (``memory_bank``, ``bank.PromptBank``): class prompts and their optimiser state in a CPU store, the
  batch's classes in a resident buffer. ``auto`` switches it on for >= ``BANK_AUTO_CLASSES`` (1000) training
  classes (SOP 11,318, In-Shop 3,997 on; CUB 100, Cars 98 off); the reference switches it by dataset name (SOP /
  In-Shop) with batch >= 256 or embedding >= 512, and its SOP / In-Shop configs set it on. Unlike the reference's
  bank (absent classes frozen), a class coming back is first brought through the steps it missed with a zero
  gradient, so training with the bank equals resident training (momentum and weight decay move absent rows in both).
- NMI: scikit-learn ``KMeans`` (one init, 20 iterations) instead of faiss k-means.
- A class-balanced batch holds ``min(P, classes present)`` classes (the reference repeats classes when there are
  fewer, which would give one class two memory updates in one batch).
- BitFit biases are trainable copies substituted at forward time (the shared backbone module is not modified).
- ``pos_mean="all"`` is the reference code's positive-term average (over every class, 0 for classes without a
  positive in the batch); ``"present"`` averages over classes with positives (the Proxy-Anchor paper).
- Data: ctta's scenario transforms (resize + centre crop); the reference trains with RandomResizedCrop + flip.
- Not built: the reference's GRU dropout (``rnn_dropout``, used by its SOP recipe only), its unused ``W_ia`` GRU
  weight, distilled-token heads (DeiT backbones) and adapters; precision is ctta's ``precision`` setting (the
  reference: CUDA AMP with a GradScaler). Parameters are created in ctta's order, so the RNG stream differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from ctta.strategies.vptspg.model import VPTSPGModel, group_by_class
from ctta.strategies.vptspg.parts import ClassBalancedBatchSampler, cosine_lr, proxy_anchor_loss
from torch import nn
from torch.utils.data import DataLoader

from ctta.backbones.vit import PromptedViT
from ctta.fields import ranged
from ctta.registry import STRATEGIES
from ctta.retrieval_metrics import RetrievalMetrics
from ctta.templates.benchmark_info import benchmark_info
from ctta.templates.epoch import EpochTemplate

__all__ = ["VPTSPGConfig", "VPTSPG", "BANK_AUTO_CLASSES", "use_bank"]

BANK_AUTO_CLASSES = 1000  # memory_bank=auto: the bank is on from this many training classes


def use_bank(setting: str | bool, num_classes: int) -> bool:
    """Whether the prompt memory bank is on: ``true`` / ``false``, or ``auto`` (>= ``BANK_AUTO_CLASSES`` classes)."""
    if setting == "auto":
        return num_classes >= BANK_AUTO_CLASSES
    return bool(setting)


@dataclass(frozen=True)
class VPTSPGConfig:
    embed_dim: int = ranged(384, ge=1)  # embedding and proxy size E
    n_prompts: int = ranged(10, ge=1)  # shared deep VPT prompts per layer
    n_class_prompts: int = ranged(3, ge=1)  # class-specific prompts per layer (proxy branch)
    prompt_depth: int | None = ranged(None, ge=1)  # blocks with shared prompts (None: all)
    prompt_step: int = ranged(0, ge=0)  # block i uses n_prompts - i * step tokens (the reference's block_step)
    class_prompt_depth: int | None = ranged(None, ge=1)  # blocks with class prompts (None: all)
    class_prompt_step: int = ranged(0, ge=0)
    bias_ratio: float = ranged(0.5, ge=0, le=1)  # proxy = ratio * bias + (1 - ratio) * memory
    gru_activation: str = "relu"  # relu (the reference's gru_relu) | tanh (gru)
    alpha: float = ranged(32.0, gt=0)  # Proxy-Anchor scale
    delta: float = ranged(0.1, ge=0)  # Proxy-Anchor margin
    pos_mean: str = "all"  # all (reference code) | present (the paper)
    samples_per_class: int = ranged(2, ge=1)  # k
    optimizer: str = "sgd"  # sgd (momentum) | adamw (torch defaults; the reference's Cars / SOP configs)
    lr: float = ranged(0.005, gt=0)  # network (biases, prompts, heads, GRU, class prompts)
    lr_proxy: float = ranged(0.1, gt=0)  # learnable proxy biases
    momentum: float = ranged(0.9, ge=0, lt=1)  # sgd only
    weight_decay: float = ranged(1e-6, ge=0)
    cosine_length: int = ranged(50, ge=1)  # CosineAnnealingLR T_max, in epochs (stepped per epoch)
    lr_min: float = ranged(1e-8, ge=0)
    epochs: int = ranged(15, ge=1)
    batch_size: int = ranged(64, ge=1)  # P x k
    eval_batch_size: int = ranged(128, ge=1)
    num_workers: int = ranged(0, ge=0)
    recall_ks: tuple[int, ...] = (1, 2, 4, 8)  # Recall@K reported (SOP's convention: 1, 10, 100, 1000)
    memory_bank: str | bool = "auto"  # class prompts in a CPU bank: auto (>= 1000 classes) | true | false

    def __post_init__(self) -> None:
        if not self.recall_ks or min(self.recall_ks) < 1:
            raise ValueError(f"recall_ks must be positive ranks, got {self.recall_ks!r}")
        if self.memory_bank not in ("auto", True, False):
            raise ValueError(f"memory_bank must be auto, true or false, got {self.memory_bank!r}")
        if self.batch_size % self.samples_per_class:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of samples_per_class "
                             f"{self.samples_per_class} (P classes x k samples)")  # fmt: skip
        if self.gru_activation not in ("relu", "tanh"):
            raise ValueError(f"gru_activation must be 'relu' or 'tanh', got {self.gru_activation!r}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.pos_mean not in ("all", "present"):
            raise ValueError(f"pos_mean must be 'all' or 'present', got {self.pos_mean!r}")


@STRATEGIES.register("vptspg", config=VPTSPGConfig)
class VPTSPG(EpochTemplate):
    """VPTSP-G (ICLR 2024): BitFit + deep VPT embeddings, semantic proxies from class prompts, Proxy-Anchor loss."""

    config_class = VPTSPGConfig
    model_class = VPTSPGModel
    distributed_ok = False  # the per-class memory update needs the whole class-balanced batch in one process
    optimizer_refusal = "VPTSP-G builds SGD with a network group and a proxy group (lr, lr_proxy) and a cosine schedule"
    criterion_refusal = "VPTSP-G's loss is Proxy-Anchor against its semantic proxies (alpha, delta)"

    @classmethod
    def benchmark_kwargs(cls, cfg, benchmark) -> dict[str, Any]:
        """One proxy per training class: the largest label of the training experiences plus one."""
        info = benchmark_info(benchmark)
        if info.task_classes:
            return {"num_classes": 1 + max(c for task in info.task_classes for c in task)}
        return {"num_classes": info.n_classes}

    @classmethod
    def extra_metrics(cls, cfg) -> tuple:
        return (RetrievalMetrics(cfg.recall_ks),)

    def prepare_backbone(self, model: nn.Module) -> nn.Module:
        return model if isinstance(model, PromptedViT) else PromptedViT(model)

    def build_model(self, backbone: nn.Module, experience) -> VPTSPGModel:
        c = self.cfg
        layout = (c.prompt_depth, c.prompt_step, c.class_prompt_depth, c.class_prompt_step)
        n = self.class_count()
        rows = min(c.batch_size // c.samples_per_class, n) if use_bank(c.memory_bank, n) else None
        return VPTSPGModel(backbone, n, c.embed_dim, c.n_prompts, c.n_class_prompts, c.bias_ratio,
                           c.samples_per_class, c.gru_activation, layout, bank_rows=rows)  # fmt: skip

    # ------------------------------------------------------------------ data
    def make_train_dataloader(self, num_workers: int | None = None, **kwargs: Any) -> None:
        """Class-balanced batches (``P`` classes x ``k`` samples, classes consecutive) instead of shuffled ones."""
        targets = [int(t) for t in self.adapted_dataset.targets]
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())  # from the run's seeded global RNG
        sampler = ClassBalancedBatchSampler(targets, self.train_mb_size, self.cfg.samples_per_class, seed)
        workers = self.num_workers if num_workers is None else num_workers
        self.dataloader = DataLoader(self.adapted_dataset, batch_sampler=sampler, num_workers=workers,
                                     pin_memory=self.device.type == "cuda")  # fmt: skip

    # ------------------------------------------------------------------ step
    def forward_train(self) -> torch.Tensor:
        bank = self.model.bank
        if bank is not None:  # the batch's class prompts (and optimiser state) into the resident buffer
            bank.withdraw(self.model.class_prompt_buffer, self.optimizer, group_by_class(self.mb_y, self.model.k))
        self.mb_proxies = self.model.semantic_proxies(self.mb_x, self.mb_y)  # (C, E)
        return self.model(self.mb_x)

    def forward_eval(self) -> torch.Tensor:
        return self.model(self.mb_x)

    def criterion(self) -> torch.Tensor:
        """Proxy-Anchor in training; in evaluation (unseen classes, no proxies) a zero loss."""
        if not self.is_training:
            return torch.zeros((), device=self.mb_output.device)
        c = self.cfg
        return proxy_anchor_loss(self.mb_output, self.mb_y, self.mb_proxies.float(), c.alpha, c.delta, c.pos_mean)

    def optimizer_step(self) -> None:
        """The update, then (with the memory bank) the resident class prompts and their state back to the bank."""
        super().optimizer_step()
        if self.model.bank is not None:
            self.model.bank.deposit(self.model.class_prompt_buffer, self.optimizer)

    def make_optimizer(self, **kwargs: Any) -> None:
        proxy = self.model.proxy_bias
        net = [p for p in self.model.parameters() if p.requires_grad and p is not proxy]
        c = self.cfg
        groups = [{"params": net, "lr": c.lr}, {"params": [proxy], "lr": c.lr_proxy}]
        if c.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(groups, lr=c.lr, weight_decay=c.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        self._epoch = 0

    def _before_training_epoch(self, **kwargs: Any) -> None:
        c = self.cfg
        for g, base in zip(self.optimizer.param_groups, (c.lr, c.lr_proxy)):
            g["lr"] = cosine_lr(base, self._epoch, c.cosine_length, c.lr_min)
        self._epoch += 1
        super()._before_training_epoch(**kwargs)
