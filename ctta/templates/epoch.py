"""Epoch-based training of one experience (``train_epochs`` passes), shared by MULTI-LANE, DAM-VP and the CLIP
prompt learners (``ctta.clip_prompting.template``).

The template's own epoch loop (Avalanche's callbacks, in Avalanche's order) with ctta's one sharded update
(``ShardedTraining.sgd_update``), a per-experience
set-up hook between model adaptation and the optimiser (a method builds its per-task optimiser there), and data
loader workers as a constructor argument.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ctta.templates.base import AvalancheSupervised, StrategyBase, split_arguments
from ctta.templates.benchmark_info import infer_num_classes
from ctta.templates.sharding import ShardedTraining
from ctta.utils import autocast

__all__ = ["EpochTemplate"]


class EpochTemplate(StrategyBase, ShardedTraining, AvalancheSupervised):
    """``train_epochs`` passes over each experience; the method builds its optimiser per experience.

    Subclasses implement ``forward_train()`` / ``forward_eval()`` (run under ``forward_autocast()``, by default the
    autocast ``precision``; cast to float32), ``criterion()`` and ``make_optimizer()``, and may override
    ``start_experience()`` (called after model adaptation, before ``make_optimizer``). A method with a
    ``model_class`` builds its model from a backbone with ``build_model(backbone, experience)`` (at construction when
    ``ready_to_build()``, else at the first experience).

    Args (beyond Avalanche's; the method's config fields are keyword arguments too):
        config: the method's config dataclass.
        num_classes: label-space size (None: from the benchmark's class timeline or the experiences' targets).
        precision: ``ctta.utils.autocast`` precision.
    """

    distributed_ok = True  # torchrun: exact sharded updates
    model_class: ClassVar[type | None] = None  # None: ``model`` is used as given
    #: the constructor's own arguments besides Avalanche's and the config fields (named in argument errors)
    constructor_arguments: ClassVar[tuple[str, ...]] = ("config", "num_classes", "precision")

    def __init__(
        self, *, model: nn.Module, config=None, num_classes: int | None = None, precision: str = "auto", **kwargs: Any
    ) -> None:
        template, method_kwargs = split_arguments(kwargs)
        self.check_arguments(template.get("optimizer"), template.get("criterion"), template.get("train_epochs"))
        cfg = self.cfg = self.resolve_config(config, method_kwargs, self.constructor_arguments)
        self.num_classes = None if num_classes is None else int(num_classes)
        template |= self.template_arguments(cfg, template, {"train_mb_size": 1, "eval_mb_size": 1, "train_epochs": 1})
        self.precision, self.num_workers = precision, int(getattr(cfg, "num_workers", 0) or 0)
        self._backbone = None  # set while the method's model waits for the benchmark
        if self.model_class is not None and not isinstance(model, self.model_class):
            self._backbone = model = self.prepare_backbone(model)
            if self.ready_to_build():
                model, self._backbone = self.build_model(model, None), None
        super().__init__(model=model, **template)

    # ------------------------------------------------------------------ hooks
    def prepare_backbone(self, model: nn.Module) -> nn.Module:
        """The user's model as the method's backbone (e.g. a plain timm ViT wrapped as ``PromptedViT``)."""
        return model

    def ready_to_build(self) -> bool:
        """Whether ``build_model`` can run before the first experience (everything it needs is known)."""
        return self.num_classes is not None

    def build_model(self, backbone: nn.Module, experience) -> nn.Module:
        """The method's model over ``backbone`` (``experience``: the first one, or None at construction)."""
        raise NotImplementedError(f"{type(self).__name__}.build_model")

    def class_count(self) -> int:
        """``num_classes``, else read from the current experience (and kept)."""
        if self.num_classes is None:
            self.num_classes = infer_num_classes(self.experience)
        return self.num_classes

    def model_adaptation(self, model=None):
        if self._backbone is not None and model is None and self.experience is not None:
            self.model = self.build_model(self._backbone, self.experience).to(self.device)
            self.model.train(self.is_training)
            self._backbone = None
        return super().model_adaptation(model)

    def start_experience(self) -> None:
        """Per-experience set-up between model adaptation and ``make_optimizer`` (e.g. a new task's lane)."""

    def forward_train(self) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement forward_train()")

    def forward_eval(self) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement forward_eval()")

    def forward_autocast(self):
        """The autocast context of the forward passes (default: the run's ``precision``)."""
        return autocast(self.device, self.precision)

    def forward_local(self) -> torch.Tensor:
        """``forward_train()`` / ``forward_eval()`` under ``forward_autocast()``, cast to float32."""
        with self.forward_autocast():
            out = self.forward_train() if self.is_training else self.forward_eval()
        return out.float()

    # ------------------------------------------------------------------ loop
    def check_model_and_optimizer(self, **kwargs: Any) -> None:
        self.model = self.model_adaptation()
        self.start_experience()
        self.make_optimizer()

    def train_experience(self, **kwargs: Any) -> None:
        """``train_epochs`` passes over the experience, one ``sgd_update`` per mini-batch, with Avalanche's epoch
        and iteration callbacks (and its early-stopping rule)."""
        for _ in range(self.train_epochs):
            self._before_training_epoch(**kwargs)
            if self._stop_training:
                self._stop_training = False
                break
            for self.mbatch in self.dataloader:
                if self._stop_training:
                    break
                self._unpack_minibatch()
                self._before_training_iteration(**kwargs)
                self.sgd_update(**kwargs)
                self._after_training_iteration(**kwargs)
            self._after_training_epoch(**kwargs)

    def make_train_dataloader(self, num_workers: int | None = None, **kwargs: Any) -> None:
        super().make_train_dataloader(num_workers=self.num_workers if num_workers is None else num_workers, **kwargs)

    def make_eval_dataloader(self, num_workers: int | None = None, **kwargs: Any) -> None:
        super().make_eval_dataloader(num_workers=self.num_workers if num_workers is None else num_workers, **kwargs)
