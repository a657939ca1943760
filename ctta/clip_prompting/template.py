"""The Avalanche template of the CLIP prompt learners: few-shot epochs on the train experience, SGD with the
warm-up + cosine per-epoch schedule, ``drop_last``, a precision switch, and evaluation on base and new classes.

Papers: CoOp (Zhou et al., IJCV 2022, arXiv 2109.01134) and the methods built on its protocol (CoCoOp, MaPLe,
PromptSRC, PRE, ATPrompt). References (behaviour read, re-implemented, no code copied): KaiyangZhou/Dassl.pytorch
@c61a1b5 ``dassl/engine/trainer.py:{SimpleTrainer, TrainerX}`` (epoch loop, ``update_lr`` after each epoch,
``drop_last``), KaiyangZhou/CoOp@ff61507 ``trainers/coop.py`` (``PREC`` fp16 / amp / fp32).

The constructor, ``from_config`` and the epoch loop are ctta's common ones (``ctta.templates.base.StrategyBase``,
``ctta.templates.epoch.EpochTemplate``); class names come from the benchmark (``ctta.templates.benchmark_info``).

Evaluation rebuilds the text head for each test stream: a benchmark may carry ``stream_classnames`` (stream name
-> class names, e.g. ``test`` -> base classes, ``test_new`` -> new classes); other streams use the benchmark's
``classnames``. The text head returns to the training classes before training. On a class-incremental stream
(Avalanche's classes timeline, ``classnames`` naming every label) the text head covers the classes seen so far: only
their prompts are encoded and the other labels get the logit ``MASKED_LOGIT`` (not with class-specific contexts,
which keep every class). ``context_out`` saves the text context after each experience in the format TPT's
``init="coop:<path>"`` reads.

Deviations: ``prec="fp16"`` (CLIP and prompts in half precision, plain SGD) and ``prec="amp"`` (fp16 autocast,
without a gradient scaler) apply on CUDA only; on other devices the model runs in fp32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ctta.clip_prompting.model import PromptedCLIP, clip_parts
from ctta.clip_prompting.optim import make_sgd, warmup_cosine
from ctta.fields import ranged
from ctta.templates.benchmark_info import _attr, benchmark_info, origin_info, stream_classnames
from ctta.templates.epoch import EpochTemplate
from ctta.utils import autocast, trainable_parameters

__all__ = ["MASKED_LOGIT", "PromptLearnerConfig", "PromptLearnerTemplate", "stream_classnames"]

PRECS = ("fp16", "amp", "fp32", "auto")


@dataclass(frozen=True)
class PromptLearnerConfig:
    """Training fields every method of the family shares (Dassl defaults; each method sets its own values)."""

    epochs: int = ranged(1, ge=1)
    batch_size: int = ranged(32, ge=1)
    eval_batch_size: int = 100
    lr: float = ranged(0.002, gt=0)  # SGD
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1  # constant warm-up epochs at warmup_lr
    warmup_lr: float = 1e-5
    prec: str = "fp16"  # fp16 (reference; CUDA only) | amp | fp32 | auto (the run's precision)
    truncate: bool = True  # exact truncation at the longest EOT (False: the 77-token reference path)
    # the official fp16 rounding of every inserted deep / vision prompt and of PromptSRC's teacher embeddings
    # (MaPLe, PromptSRC, ATPrompt compute it in every precision); False: unrounded (ctta's earlier results)
    round_prompts: bool = True
    # seed of the random initialisations (random contexts, deep prompts, couplings, meta-net); None: the run's RNG
    init_seed: int | None = None
    context_out: str = ""  # after each training experience save the text context here (TPT's init="coop:<path>")
    num_workers: int = 0


def init_generator(cfg) -> torch.Generator | None:
    """A CPU generator seeded with ``cfg.init_seed`` (None when unset: the global RNG, as the references)."""
    seed = getattr(cfg, "init_seed", None)
    return None if seed is None else torch.Generator().manual_seed(int(seed))


MASKED_LOGIT = -1e4  # logit of a class not seen yet (finite, so the loss of an unseen label stays finite)


class PromptLearnerTemplate(EpochTemplate):
    """Epoch training of a ``PromptedCLIP``'s trainable parameters (Dassl conventions).

    Subclasses set ``config_class`` and implement ``build_prompted(clip, tokenizer, classnames, cfg)``; they may
    override ``criterion()`` (default: cross-entropy on ``mb_output``) and ``epoch_end()``.

    Args (beyond Avalanche's, whose meaning is Avalanche's; ``train_mb_size``/``train_epochs``/``eval_mb_size``
    default to the config's ``batch_size``/``epochs``/``eval_batch_size``; ``optimizer=None``: SGD from the config;
    the config's fields are keyword arguments too):
        model: the method's prompted CLIP, or an open_clip ``CLIP`` / ``CLIPBackbone`` it is built around.
        tokenizer, classnames: needed when ``model`` is a plain CLIP (the backbone's tokenizer is used if it has one).
        precision: the run's autocast precision (used with ``prec="auto"``).
        config: the method's config dataclass; keyword arguments override its fields.
    """

    distributed_ok = False  # the losses read un-sharded batch tensors (e.g. PromptSRC's teacher on mb_x)
    model_class = PromptedCLIP  # anything else is the CLIP the method's model is built around
    records_epochs = True  # the runner records each epoch's training loss and top-1 (few-shot runs)
    constructor_arguments = ("config", "precision", "tokenizer", "classnames")

    def __init__(
        self, *, model: nn.Module, tokenizer=None, classnames: Sequence[str] | None = None, **kwargs: Any
    ) -> None:
        if "num_classes" in kwargs:
            raise TypeError(f"{type(self).__name__}() takes classnames=[...], not num_classes (one name per label)")
        self._tokenizer, self._classnames = tokenizer, classnames
        super().__init__(model=model, **kwargs)
        cfg = self.cfg
        del self._tokenizer, self._classnames
        self.user_optimizer = kwargs.get("optimizer") is not None
        self.lr, self.momentum, self.weight_decay = cfg.lr, cfg.momentum, cfg.weight_decay
        self.warmup_epochs, self.warmup_lr = cfg.warmup_epochs, cfg.warmup_lr
        self.scheduler = None
        self.prec = cfg.prec
        if self.prec == "fp16" and self.device.type == "cuda":
            self.model.half()
        self.train_classnames = list(getattr(self.model, "classnames", []) or [])
        self.all_classnames = list(self.train_classnames)
        self.seen: list[int] | None = None  # class-incremental: the head covers these label ids (None: all)

    # ------------------------------------------------------------------ the method's model
    @classmethod
    def resolve_config(cls, config, method_kwargs: dict[str, Any], extra_valid=()):
        cfg = super().resolve_config(config, method_kwargs, extra_valid)
        if cfg.prec not in PRECS:  # before any model is built
            raise ValueError(f"prec={cfg.prec!r}; valid: {PRECS}")
        return cfg

    def ready_to_build(self) -> bool:
        return True  # the prompted CLIP is built at construction (tokenizer and class names are arguments)

    def build_model(self, backbone: nn.Module, experience) -> nn.Module:
        """The method's prompted CLIP around the user's open_clip ``CLIP`` (or ``CLIPBackbone``, or a ``(model,
        tokenizer)`` pair; ``clip_parts``) with ``tokenizer`` and ``classnames``."""
        name = type(self).__name__
        if not self._classnames:
            raise ValueError(f"{name} needs the class names of the text head: pass classnames=[...] (one per label)")
        clip_model, tokenizer = clip_parts(backbone, self._tokenizer, require_tokenizer=name)
        return self.build_prompted(clip_model, tokenizer, list(self._classnames), self.cfg)

    @classmethod
    def build_prompted(cls, clip_model: nn.Module, tokenizer, classnames: list[str], cfg) -> nn.Module:
        """The method's ``PromptedCLIP`` over ``clip_model`` for ``classnames``."""
        raise NotImplementedError(f"{cls.__name__}.build_prompted")

    # ------------------------------------------------------------------ runner entry
    @classmethod
    def extra_metrics(cls, cfg) -> tuple:
        from ctta.clip_prompting.metrics import BaseNewAccuracy

        return (BaseNewAccuracy(),)

    @classmethod
    def benchmark_kwargs(cls, cfg, benchmark) -> dict[str, Any]:
        """The training classes' names: the benchmark record's ``stream_classnames["train"]``, else its
        ``classnames``."""
        try:
            names = benchmark_info(benchmark).names_of_stream("train")
        except ValueError as e:  # not a benchmark ctta can read: say what the learner needs
            raise ValueError(f"{cls.__name__} needs class names: pass classnames=[...] ({e})") from e
        if not names:
            raise ValueError(f"{cls.__name__} needs class names: the benchmark has no classnames")
        return {"classnames": list(names)}

    # ------------------------------------------------------------------ optimiser and schedule
    def make_optimizer(self, **kwargs: Any) -> None:
        params = trainable_parameters(self.model)
        if not params:
            raise RuntimeError(f"{type(self.model).__name__} has no trainable parameters")
        if self.user_optimizer:
            ids = {id(p) for p in params}
            for g in self.optimizer.param_groups:
                g["params"] = [p for p in g["params"] if id(p) in ids]
        else:
            self.optimizer = make_sgd(params, self.lr, self.momentum, self.weight_decay)
        self.scheduler = warmup_cosine(self.optimizer, self.train_epochs, self.warmup_epochs, self.warmup_lr)

    def _after_training_epoch(self, **kwargs: Any) -> None:
        if self.scheduler is not None:
            self.scheduler.step()  # Dassl's update_lr after the epoch's last batch
        self.epoch_end()
        super()._after_training_epoch(**kwargs)

    def epoch_end(self) -> None:
        """Called after each training epoch (after the schedule step), e.g. for epoch weight averaging."""

    # ------------------------------------------------------------------ data
    def make_train_dataloader(self, num_workers: int | None = None, shuffle: bool = True, **kwargs: Any) -> None:
        drop_last = len(self.adapted_dataset) >= self.train_mb_size  # Dassl: drop_last when there is a full batch
        kwargs.pop("drop_last", None)
        super().make_train_dataloader(num_workers=num_workers, shuffle=shuffle, drop_last=drop_last, **kwargs)

    # ------------------------------------------------------------------ class names per stream
    def _head(self, names: list[str], seen: list[int] | None) -> None:
        self.seen = seen
        if list(self.model.classnames) != names:
            self.model.set_classnames(names)

    def _class_incremental_seen(self) -> list[int] | None:
        """Label ids seen so far on a class-incremental stream (Avalanche's classes timeline), else None."""
        info = origin_info(self.experience)
        if info is not None and info.stream_classnames:
            return None  # ctta's few-shot benchmarks name the classes of every stream
        ctx = getattr(self.model, "ctx", None)
        if ctx is not None and ctx.dim() == 3:
            return None  # class-specific contexts: the head keeps every class
        seen = _attr(self.experience, "classes_seen_so_far")
        if not seen or max(seen) >= len(self.all_classnames):
            return None
        return sorted(int(c) for c in seen)

    def _before_training_exp(self, **kwargs: Any) -> None:
        seen = self._class_incremental_seen()
        if seen is not None:
            self._head([self.all_classnames[c] for c in seen], seen)
        elif self.train_classnames:
            self._head(self.train_classnames, None)
        super()._before_training_exp(**kwargs)

    def _after_training_exp(self, **kwargs: Any) -> None:
        if self.cfg.context_out:
            from ctta.clip_prompting.model import save_text_context

            save_text_context(self.model, self.cfg.context_out)
        super()._after_training_exp(**kwargs)

    def _before_eval_exp(self, **kwargs: Any) -> None:
        info = origin_info(self.experience)
        names = stream_classnames(self.experience) if info is not None and info.stream_classnames else None
        if names:
            self._head(names, None)
        elif self.seen is not None:
            self._head([self.all_classnames[c] for c in self.seen], self.seen)
        elif self.all_classnames:
            self._head(self.all_classnames, None)
        super()._before_eval_exp(**kwargs)

    def eval_after_experience(self, benchmark, index: int) -> None:
        """Evaluate every test stream of ``benchmark``: ``test``, then ``test_new`` and any other ``test_*`` stream
        (base-to-new, cross-dataset and domain-generalisation evaluations)."""
        names = list(getattr(benchmark, "streams", None) or ["test"])
        for name in names:
            if name == "test" or name.startswith("test_"):
                self.eval(getattr(benchmark, f"{name}_stream"))  # the attribute carries the benchmark reference

    # ------------------------------------------------------------------ forward
    def forward_autocast(self):
        if self.prec == "amp":  # the references' amp (fp16 autocast) is a CUDA setting; elsewhere fp32
            return autocast(self.device, "fp16" if self.device.type == "cuda" else "fp32")
        if self.prec == "auto":
            return autocast(self.device, self.precision)
        return autocast(self.device, "fp32")

    def forward_train(self) -> torch.Tensor:
        """The prompted CLIP's logits (under ``forward_autocast``, the template's ``forward_local``)."""
        x = self.mb_x
        if self.prec == "fp16" and self.device.type == "cuda":
            x = x.half()
        out = self.model(x).float()
        if self.seen is not None:  # logits of the classes seen so far; the others are masked out
            full = out.new_full((out.shape[0], len(self.all_classnames)), MASKED_LOGIT)
            full[:, self.seen] = out
            out = full
        return out

    forward_eval = forward_train
