"""The online update loop: an experience consumed in stream order, ``online_iters`` updates per incoming batch.

Si-Blurry protocol (Moon et al., ICCV 2023, arXiv 2308.09303; reference moonjunyyy/Si-Blurry@c4024ce
``methods/er_baseline.py``): no shuffling; each incoming batch exposes its classes, then ``online_iters`` optimiser
updates run on it (plus replayed samples, re-augmented every update); the anytime evaluation runs every
``anytime_eval_every`` stream samples and at each task end. ``OnlineCLTemplate`` composes the concerns: label
exposure (``exposure``), replay (``replay``), resumable state (``state``), torchrun sharding (``sharding``), the
anytime evaluation (``anytime``) and the common constructor (``base``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ctta.fields import ranged
from ctta.templates.anytime import AnytimeEvalPlugin
from ctta.templates.base import AvalancheSupervised, StrategyBase, restrict_to_trainable, split_arguments
from ctta.templates.benchmark_info import benchmark_info, infer_num_classes
from ctta.templates.exposure import LabelExposure
from ctta.templates.replay import ReplayComposition
from ctta.templates.sharding import ShardedTraining
from ctta.templates.state import ResumableState
from ctta.templates.stream_order import StreamOrder
from ctta.utils import autocast, resolve_device, trainable_parameters

__all__ = ["OnlineConfig", "OnlineCLTemplate", "as_prompted_vit"]

_SHUFFLE_REFUSAL = (
    "{name} cannot honour shuffle=True: an online stream is consumed in stream order (that order is the protocol: "
    "which classes appear when, and what the anytime evaluation measures); leave shuffle unset or False"
)
_TEMPLATE_DEFAULTS = {"train_mb_size": 64, "eval_mb_size": 128, "anytime_eval_every": 1000}
_COMMON = ("config", "num_classes", "anytime_eval_every", "anytime_eval_dataset", "precision", "train_augment")


@dataclass(frozen=True)
class OnlineConfig:
    """Protocol settings of every online strategy (a method's config adds its own fields).

    Attributes:
        online_iters: optimiser updates per incoming batch.
        batch_size: incoming stream batch (``train_mb_size``): a training hyper-parameter of the strategy alone.
        eval_every: stream samples between anytime evaluations (``anytime_eval_every``; <= 0: task ends only).
        eval_batch_size: evaluation mini-batch (``eval_mb_size``).
        memory_size: reservoir replay capacity (0: rehearsal-free).
        memory_batch_size: replayed samples appended to each update.
    """

    online_iters: int = ranged(3, ge=1)
    batch_size: int = 64
    eval_every: int = 1000
    eval_batch_size: int = 128
    memory_size: int = 0
    memory_batch_size: int = 32


def as_prompted_vit(model: nn.Module) -> nn.Module:
    """A ``PromptedViT`` around a plain timm ViT (``num_classes=0``); an already wrapped one is returned as is."""
    from ctta.backbones.vit import PromptedViT

    return model if isinstance(model, PromptedViT) else PromptedViT(model)


class OnlineCLTemplate(
    StrategyBase, LabelExposure, StreamOrder, ReplayComposition, ResumableState, ShardedTraining,
    AvalancheSupervised,
):
    """Online class-incremental template: ``online_iters`` updates per incoming batch, in stream order.

    Subclasses implement ``forward_logits()`` -> ``(B, num_classes)`` logits over exposed POSITIONS and may override
    ``criterion()`` (default: the criterion of ``mb_logits_pos`` against ``mb_y_pos``) and ``augment(x)``. A method
    sets ``config_class`` and ``model_class`` and implements ``build_model(backbone, num_classes)`` and
    ``reference_optimizer(params)``; ``model`` may then be its model or a backbone (a plain timm ViT is wrapped),
    and the model is built when ``num_classes`` is known (else at the first experience, from the benchmark).

    Args (beyond Avalanche's; the method's config fields are keyword arguments too):
        config: the method's config dataclass.
        num_classes: label-space size (None: from the first experience's benchmark or targets).
        anytime_eval_every: stream samples between anytime evaluations (None: the config's ``eval_every``).
        anytime_eval_dataset: test set for the anytime evaluation (None: the benchmark's, found when training
            starts; False: no anytime evaluation).
        precision: ``ctta.utils.autocast`` precision. train_augment: batch augmentation re-drawn every update.
    """

    applies_seen_mask = False  # set True if forward_logits already adds ``seen_mask()``
    distributed_ok = True  # torchrun: exact sharded updates (``loss_inputs`` must list what criterion() reads)
    resumable = True  # ``ResumableState``: exact resume mid-experience
    train_epochs_refusal = (
        "an online method makes one pass over the stream; set online_iters for several updates per incoming batch"  # noqa: E501
    )
    config_class: ClassVar[type | None] = OnlineConfig
    model_class: ClassVar[type | None] = None  # None: ``model`` is used as given

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        config=None,
        num_classes: int | None = None,
        anytime_eval_every: int | None = None,
        anytime_eval_dataset=None,
        precision: str = "auto",
        train_augment=None,
        **kwargs: Any,
    ) -> None:
        template, method_kwargs = split_arguments(kwargs)
        self.check_arguments(optimizer, template.get("criterion"), template.get("train_epochs"))
        cfg = self.cfg = self.resolve_config(self.config_for(config, model), method_kwargs, _COMMON)
        online_iters = int(self.from_cfg(None, cfg, "online_iters", 3))
        given = {**template, "anytime_eval_every": anytime_eval_every}
        args = self.template_arguments(cfg, given, _TEMPLATE_DEFAULTS)
        every, train_mb_size = args.pop("anytime_eval_every"), args["train_mb_size"]
        template |= args | {"train_epochs": 1}
        if (num_classes is not None and num_classes <= 0) or online_iters < 1 or train_mb_size < 1:
            raise ValueError(
                f"need num_classes > 0, online_iters >= 1, train_mb_size >= 1; got "
                f"{num_classes}, {online_iters}, {train_mb_size}"
            )
        self.device = resolve_device(template.get("device", "auto"))
        self._backbone = None  # set while the method's model waits for the class count
        if self.model_class is not None and not isinstance(model, self.model_class):
            backbone = as_prompted_vit(model)
            if num_classes is None:
                self._backbone, model = backbone, backbone
            else:
                model = self.build_model(backbone, int(num_classes))
        self._user_optimizer = optimizer is not None
        if optimizer is None and self._backbone is None:
            optimizer = self.new_optimizer(model)
        plugins = template["plugins"] = list(template.get("plugins") or [])
        if anytime_eval_dataset is not False:  # first, so checkpoints taken by later plugins include its eval
            plugins.insert(0, AnytimeEvalPlugin(anytime_eval_dataset, every))
        super().__init__(model=model, optimizer=optimizer, **template)
        self.online_iters = online_iters
        self.anytime_eval_every = every
        self.precision = precision
        self.train_augment = train_augment  # batch augmentation from the scenario (e.g. Si-Blurry's)
        self.init_replay(int(self.from_cfg(None, cfg, "memory_size", 0)),
                         int(self.from_cfg(None, cfg, "memory_batch_size", 32)))  # fmt: skip
        self.init_exposure(num_classes or 0)
        self._stream_batch: list[torch.Tensor] | None = None  # the incoming batch, without replayed rows
        self._exp_offset = 0  # stream position inside the current experience (memory references)
        self.seen_samples = 0
        self.eval_kind: str | None = None  # "periodic" | "task_end" | None (manual eval)
        self.mb_logits_pos: torch.Tensor | None = None
        self._optimizer_ready = False
        self.exp_index = -1  # experiences started (train() calls)
        self.batches_done = 0  # incoming batches consumed in the current experience
        self.exp_done = False

    # ------------------------------------------------------------------ method hooks
    def config_for(self, config, model):
        """The config to start from (a method may take it from a model built with one)."""
        return config

    def build_model(self, backbone: nn.Module, num_classes: int) -> nn.Module:
        """The method's model over a ``PromptedViT`` backbone (methods with a ``model_class``)."""
        raise NotImplementedError(f"{type(self).__name__}.build_model")

    def reference_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """The method's optimiser when ``optimizer=None`` (from its config)."""
        raise ValueError(f"{type(self).__name__} has no reference optimiser: pass optimizer=")

    def new_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return self.reference_optimizer(trainable_parameters(model))

    def model_adaptation(self, model=None):
        """At the first experience: the class count from the benchmark when it was not given, and the method's
        model built on it (Avalanche's model-adaptation hook, before ``make_optimizer``)."""
        if model is None and self.num_classes == 0 and self.experience is not None:
            n = infer_num_classes(self.experience)
            self.init_exposure(n)
            if self._backbone is not None:
                self.model = self.build_model(self._backbone, n).to(self.device)
                self.model.train(self.is_training)
                self._backbone = None
                if not self._user_optimizer:
                    self.optimizer = self.new_optimizer(self.model)
        return super().model_adaptation(model)

    # ------------------------------------------------------------------ forward and loss
    def forward_logits(self) -> torch.Tensor:
        """``(B, num_classes)`` logits over exposed positions for ``self.mb_x``."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward_logits()")

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """Training-time batch augmentation, re-drawn at every update (``train_augment`` or identity)."""
        return x if self.train_augment is None else self.train_augment(x)

    def forward_local(self) -> torch.Tensor:
        with autocast(self.device, self.precision):
            logits = self.forward_logits()
        logits = logits.float()
        if not self.applies_seen_mask:
            logits = logits + self.seen_mask()
        self.mb_logits_pos = logits
        return self.positions_to_classes(logits)

    def loss_inputs(self) -> dict[str, Any]:
        return {"mb_logits_pos": self.mb_logits_pos}

    def criterion(self) -> torch.Tensor:
        if not self.is_training:
            return self._criterion(self.mb_output.clamp_min(-1e4), self.mb_y)
        return self._criterion(self.mb_logits_pos, self.mb_y_pos)

    # ------------------------------------------------------------------ optimiser and loop
    def make_optimizer(self, reset_optimizer_state: bool = False, **kwargs: Any) -> None:
        """Trainable parameters only; the optimiser state is created once and kept across experiences."""
        restrict_to_trainable(self.optimizer, self.model, reset_state=not self._optimizer_ready)
        self._optimizer_ready = True

    def check_model_and_optimizer(self, **kwargs: Any) -> None:
        self.model = self.model_adaptation()
        self.make_optimizer()

    def check_train_arguments(self, kwargs: dict[str, Any]) -> None:
        """``shuffle=True`` is refused before anything runs (stream order is the protocol)."""
        if kwargs.get("shuffle"):
            raise ValueError(_SHUFFLE_REFUSAL.format(name=type(self).__name__))

    def make_train_dataloader(self, shuffle: bool = False, **kwargs: Any) -> None:
        """Stream order is the protocol: never shuffle (``shuffle=True`` raises ``ValueError``)."""
        if shuffle:
            raise ValueError(_SHUFFLE_REFUSAL.format(name=type(self).__name__))
        super().make_train_dataloader(shuffle=False, **kwargs)

    def _before_training_exp(self, **kwargs: Any) -> None:
        self.exp_index += 1
        self.batches_done, self.exp_done, self._exp_offset = 0, False, 0
        super()._before_training_exp(**kwargs)

    def _after_training_exp(self, **kwargs: Any) -> None:
        self.exp_done = True
        super()._after_training_exp(**kwargs)

    def train_experience(self, **kwargs: Any) -> None:
        """One pass in stream order: each incoming batch is exposed, then ``online_iters`` updates run on it (plus
        replayed rows, re-augmented every update); Avalanche's epoch and iteration callbacks around them."""
        self._before_training_epoch(**kwargs)
        if self._stop_training:  # early stopping (Avalanche's rule)
            self._stop_training = False
            return
        skip, self._skip_batches = self._skip_batches, 0
        for self.mbatch in self.dataloader:
            if self._stop_training:
                break
            if self.batches_done < skip:  # resuming: these batches were consumed before the checkpoint
                self.batches_done += 1
                self._exp_offset += len(self.mbatch[1])
                continue
            self._restore_resume_rng()
            self._unpack_minibatch()
            self._before_training_iteration(**kwargs)
            self.expose(self.mb_y)
            stream = self._stream_batch = list(self.mbatch)
            for _ in range(self.online_iters):
                self.mbatch = self.replay_batch(stream)
                self.mbatch[0] = self.augment(self.mbatch[0])
                self.sgd_update(**kwargs)
            self.end_incoming_batch(stream)
            self._after_training_iteration(**kwargs)
        self._restore_resume_rng()
        self._after_training_epoch(**kwargs)

    def end_incoming_batch(self, stream: list[torch.Tensor]) -> None:
        """After an incoming batch's updates: plugins see the stream batch (replayed rows dropped), the batch
        enters the replay memory and the stream position advances."""
        n = len(stream[0])
        self.mbatch = list(stream)
        if self.mb_output is not None:
            self.mb_output = self.mb_output[:n]
        self.remember(self.experience.dataset, self._exp_offset, n, self.exp_index)
        self._exp_offset += n
        self.after_incoming_batch()
        self.seen_samples += n
        self.batches_done += 1

    def eval_after_experience(self, benchmark, index: int):
        """Nothing when the anytime evaluation ran inside ``train()`` (the usual case), else the test stream."""
        if any(isinstance(p, AnytimeEvalPlugin) for p in self.plugins):
            return None
        return super().eval_after_experience(benchmark, index)

    def after_incoming_batch(self) -> None:
        """Called once per incoming batch after its updates (e.g. a per-batch cache reset)."""

    # ------------------------------------------------------------------ ctta benchmarks
    @classmethod
    def benchmark_kwargs(cls, cfg, benchmark) -> dict[str, Any]:
        """``n_classes``, ``test_dataset`` and ``train_augment`` of the benchmark's record (the incoming batch size is
        the strategy's own ``batch_size``, never the benchmark's)."""
        info = benchmark_info(benchmark)
        return {
            "num_classes": info.n_classes,
            "anytime_eval_dataset": info.test_dataset,
            "train_augment": info.train_augment,
        }

    @classmethod
    def metrics(cls, config=None) -> list:
        """ctta's anytime metrics (A_auc, A_last, F_last) and the method's extra metrics."""
        from ctta.metrics import AnytimeAccuracy

        return [AnytimeAccuracy(), *super().metrics(config)]
