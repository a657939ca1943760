"""The Avalanche template of the CLIP prompt learners: few-shot epochs on the train experience, SGD with the
warm-up + cosine per-epoch schedule, ``drop_last``, a precision switch, and evaluation on base and new classes.

Papers: CoOp (Zhou et al., IJCV 2022, arXiv 2109.01134) and the methods built on its protocol (CoCoOp, MaPLe,
PromptSRC, PRE, ATPrompt). References (behaviour read, re-implemented, no code copied): KaiyangZhou/Dassl.pytorch
@c61a1b5 ``dassl/engine/trainer.py:{SimpleTrainer, TrainerX}`` (epoch loop, ``update_lr`` after each epoch,
``drop_last``), KaiyangZhou/CoOp@ff61507 ``trainers/coop.py`` (``PREC`` fp16 / amp / fp32).

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

import dataclasses
import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from avalanche.training.templates import SupervisedTemplate
from torch import nn

from ctta.clip_prompting.optim import make_sgd, warmup_cosine
from ctta.utils import autocast, resolve_device, trainable_parameters

__all__ = ["PromptLearnerConfig", "PromptLearnerTemplate", "stream_classnames"]

PRECS = ("fp16", "amp", "fp32", "auto")
AVALANCHE_ARGS = (
    "model", "optimizer", "criterion", "train_mb_size", "train_epochs", "eval_mb_size", "device", "plugins",
    "evaluator", "eval_every",
)  # fmt: skip
_DEFAULT: Any = object()  # sentinel: Avalanche's default evaluator plus the method's metrics


def _default_evaluator(extra) -> Any:
    from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.plugins.evaluation import default_loggers

    return EvaluationPlugin(
        accuracy_metrics(minibatch=False, epoch=True, experience=True, stream=True),
        loss_metrics(minibatch=False, epoch=True, experience=True, stream=True),
        *extra,
        loggers=default_loggers,
    )


@dataclass(frozen=True)
class PromptLearnerConfig:
    """Training fields every method of the family shares (Dassl defaults; each method sets its own values)."""

    epochs: int = 1
    batch_size: int = 32
    eval_batch_size: int = 100
    lr: float = 0.002  # SGD
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1  # constant warm-up epochs at warmup_lr
    warmup_lr: float = 1e-5
    prec: str = "fp16"  # fp16 (reference; CUDA only) | amp | fp32 | auto (the run's precision)
    truncate: bool = True  # exact truncation at the longest EOT (False: the 77-token reference path)
    context_out: str = ""  # after each training experience save the text context here (TPT's init="coop:<path>")
    num_workers: int = 0


def _attr(obj, name: str):
    try:
        return getattr(obj, name, None)
    except Exception:  # Avalanche raises for unset origin attributes
        return None


MASKED_LOGIT = -1e4  # logit of a class not seen yet (finite, so the loss of an unseen label stays finite)


def stream_benchmark(exp):
    """The benchmark ``exp``'s stream belongs to (None if unknown)."""
    return _attr(_attr(exp, "origin_stream"), "benchmark")


def stream_classnames(exp) -> list[str] | None:
    """Class names of ``exp``'s stream: the benchmark's ``stream_classnames[name]``, else its ``classnames``."""
    stream = _attr(exp, "origin_stream")
    bench = _attr(stream, "benchmark")
    per_stream = _attr(bench, "stream_classnames") or {}
    name = _attr(stream, "name")
    names = per_stream.get(name) if name is not None else None
    return list(names) if names else (list(bench.classnames) if _attr(bench, "classnames") else None)


class PromptLearnerTemplate(SupervisedTemplate):
    """Epoch training of a ``PromptedCLIP``'s trainable parameters (Dassl conventions).

    Subclasses set ``config_class`` and implement ``build_model(clip, tokenizer, classnames, cfg)``; they may
    override ``criterion()`` (default: cross-entropy on ``mb_output``) and ``epoch_end()``.

    Args (beyond Avalanche's, whose meaning is Avalanche's; ``train_mb_size``/``train_epochs``/``eval_mb_size``
    default to the config's ``batch_size``/``epochs``/``eval_batch_size``; ``optimizer=None``: SGD from the config):
        model: the method's prompted CLIP, or an open_clip ``CLIP`` / ``CLIPBackbone`` it is built around.
        tokenizer, classnames: needed when ``model`` is a plain CLIP (the backbone's tokenizer is used if it has one).
        precision: the run's autocast precision (used with ``prec="auto"``).
        config: the method's config dataclass; ``**method_kwargs`` (its field names) override its fields.
    """

    config_class: ClassVar[type | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Each method gets its own ``__init__`` whose signature lists its config fields as keyword-only arguments
        (Avalanche's misspelt-argument check reads the signatures of the MRO); set before Avalanche wraps it."""
        if cls.config_class is not None and "__init__" not in cls.__dict__:

            def __init__(self, **kw: Any) -> None:
                self._setup(**kw)

            sig = inspect.signature(PromptLearnerTemplate._setup)
            params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
            names = {p.name for p in params}
            extra = [
                inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default)
                for f in dataclasses.fields(cls.config_class)
                if f.init and f.name not in names
            ]
            __init__.__signature__ = sig.replace(parameters=[*params, *extra])
            __init__.__doc__ = PromptLearnerTemplate._setup.__doc__
            cls.__init__ = __init__
        super().__init_subclass__(**kwargs)

    def __init__(self, **kwargs: Any) -> None:
        self._setup(**kwargs)

    def _setup(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        criterion=None,
        train_mb_size: int | None = None,
        train_epochs: int | None = None,
        eval_mb_size: int | None = None,
        device: str | torch.device = "cpu",
        plugins=None,
        evaluator: Any = _DEFAULT,
        eval_every: int = -1,
        precision: str = "auto",
        config=None,
        tokenizer=None,
        classnames: Sequence[str] | None = None,
        **method_kwargs: Any,
    ) -> None:
        """The constructor (see the class docstring); each method's ``__init__`` calls it."""
        cfg = self.resolve_config(config, method_kwargs)
        if cfg.prec not in PRECS:
            raise ValueError(f"prec={cfg.prec!r}; valid: {PRECS}")
        model = self._as_prompted(model, tokenizer, classnames, cfg)
        device = resolve_device(device)
        if evaluator is _DEFAULT:
            evaluator = _default_evaluator(self.extra_metrics(cfg))
        super().__init__(
            model=model,
            optimizer=optimizer if optimizer is not None else torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.0),
            criterion=criterion if criterion is not None else nn.CrossEntropyLoss(),
            train_mb_size=train_mb_size or cfg.batch_size, train_epochs=train_epochs or cfg.epochs,
            eval_mb_size=eval_mb_size or cfg.eval_batch_size, device=device, plugins=plugins, evaluator=evaluator,
            eval_every=eval_every,
        )  # fmt: skip
        self.cfg = cfg
        self.user_optimizer = optimizer is not None
        self.lr, self.momentum, self.weight_decay = cfg.lr, cfg.momentum, cfg.weight_decay
        self.warmup_epochs, self.warmup_lr = cfg.warmup_epochs, cfg.warmup_lr
        self.num_workers, self.scheduler = cfg.num_workers, None
        self.prec, self.precision = cfg.prec, precision
        if self.prec == "fp16" and device.type == "cuda":
            self.model.half()
        self.train_classnames = list(getattr(model, "classnames", []) or [])
        self.all_classnames = list(self.train_classnames)
        self.seen: list[int] | None = None  # class-incremental: the head covers these label ids (None: all)

    # ------------------------------------------------------------------ arguments
    @classmethod
    def resolve_config(cls, config, method_kwargs: dict[str, Any]):
        """``config`` (default: the method's default config) with ``method_kwargs`` applied; unknown names raise
        ``TypeError`` naming them and the valid ones."""
        fields = {f.name for f in dataclasses.fields(cls.config_class) if f.init}
        unknown = sorted(k for k in method_kwargs if k not in fields)
        if unknown:
            valid = sorted({*AVALANCHE_ARGS, "precision", "config", "tokenizer", "classnames", *fields})
            raise TypeError(f"{cls.__name__}() got unexpected keyword argument(s) {unknown}; valid: {valid}")
        if config is None:
            config = cls.config_class()
        elif not isinstance(config, cls.config_class):
            raise TypeError(
                f"{cls.__name__}: config must be a {cls.config_class.__name__}, got {type(config).__name__}"
            )
        return dataclasses.replace(config, **method_kwargs) if method_kwargs else config

    @classmethod
    def _as_prompted(cls, model: nn.Module, tokenizer, classnames, cfg) -> nn.Module:
        """The method's prompted CLIP: ``model`` itself if it already is one, else built around the user's open_clip
        ``CLIP`` (or ``CLIPBackbone``) with ``tokenizer`` and ``classnames``."""
        from ctta.clip_prompting.model import PromptedCLIP

        if isinstance(model, PromptedCLIP):
            return model
        clip_model = getattr(model, "model", model)
        tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise ValueError(
                f"{cls.__name__} needs the CLIP tokenizer: pass tokenizer= (open_clip.get_tokenizer(name))"
            )
        if not classnames:
            raise ValueError(
                f"{cls.__name__} needs the class names of the text head: pass classnames=[...] (one per label)"
            )
        return cls.build_model(clip_model, tokenizer, list(classnames), cfg)

    # ------------------------------------------------------------------ runner entry
    @classmethod
    def extra_metrics(cls, cfg) -> tuple:
        from ctta.clip_prompting.metrics import BaseNewAccuracy

        return (BaseNewAccuracy(),)

    @classmethod
    def build_model(cls, clip_model: nn.Module, tokenizer, classnames: list[str], cfg) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def from_config(cls, cfg, *, backbone, benchmark, device, evaluator, plugins=(), precision="auto"):
        """Build the method's prompted CLIP over ``benchmark``'s training classes and the strategy (``ctta run``)."""
        from ctta.clip_prompting.model import clip_and_tokenizer

        cfg = cfg if cfg is not None else cls.config_class()
        clip_model, tok = clip_and_tokenizer(backbone)
        names = (getattr(benchmark, "stream_classnames", None) or {}).get("train") or benchmark.classnames
        if not names:
            raise ValueError(f"{cls.__name__} needs class names: the benchmark has no classnames")
        model = cls.build_model(clip_model, tok, list(names), cfg)
        if evaluator is None:
            from ctta.logging import make_evaluator

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                evaluator = make_evaluator(extra_metrics=cls.extra_metrics(cfg))
        return cls(model=model, config=cfg, device=device, plugins=list(plugins), evaluator=evaluator,
                   precision=precision)  # fmt: skip

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
        nw = self.num_workers if num_workers is None else num_workers
        super().make_train_dataloader(num_workers=nw, shuffle=shuffle, drop_last=drop_last, **kwargs)

    # ------------------------------------------------------------------ class names per stream
    def _head(self, names: list[str], seen: list[int] | None) -> None:
        self.seen = seen
        if list(self.model.classnames) != names:
            self.model.set_classnames(names)

    def _class_incremental_seen(self) -> list[int] | None:
        """Label ids seen so far on a class-incremental stream (Avalanche's classes timeline), else None."""
        if getattr(stream_benchmark(self.experience), "stream_classnames", None):
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
        per_stream = getattr(stream_benchmark(self.experience), "stream_classnames", None)
        names = stream_classnames(self.experience) if per_stream else None
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
    def _autocast(self):
        if self.prec == "amp":  # the references' amp (fp16 autocast) is a CUDA setting; elsewhere fp32
            return autocast(self.device, "fp16" if self.device.type == "cuda" else "fp32")
        if self.prec == "auto":
            return autocast(self.device, self.precision)
        return autocast(self.device, "fp32")

    def forward(self) -> torch.Tensor:
        x = self.mb_x
        if self.prec == "fp16" and self.device.type == "cuda":
            x = x.half()
        with self._autocast():
            out = self.model(x).float()
        if self.seen is not None:  # logits of the classes seen so far; the others are masked out
            full = out.new_full((out.shape[0], len(self.all_classnames)), MASKED_LOGIT)
            full[:, self.seen] = out
            out = full
        return out
