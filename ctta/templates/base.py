"""The common constructor of ctta's strategies and ``from_config`` (the runner's entry point).

Every strategy takes Avalanche's template arguments with Avalanche's meaning (``model``, ``optimizer``,
``criterion``, ``train_mb_size``, ``train_epochs``, ``eval_mb_size``, ``device``, ``plugins``, ``evaluator``,
``eval_every``) plus the method's own keyword arguments, which are the fields of its config dataclass (or
``config=`` the dataclass itself; keyword arguments override its fields). What a method cannot honour is refused
with a clear error (``optimizer_refusal``, ``criterion_refusal``, ``train_epochs`` of an online method); unknown
keyword arguments raise ``TypeError`` naming the valid ones, as Avalanche's templates do.

Config fields that are template arguments in Avalanche's vocabulary map to them: ``batch_size`` ->
``train_mb_size``, ``eval_batch_size`` -> ``eval_mb_size``, ``epochs`` -> ``train_epochs``, ``eval_every`` (ctta's
anytime evaluation, in stream samples) -> ``anytime_eval_every``; an explicit template argument wins.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.templates import BaseSGDTemplate
from avalanche.training.templates.base import _experiences_parameter_as_iterable, _group_experiences_by_stream
from avalanche.training.templates.observation_type import BatchObservation
from avalanche.training.templates.problem_type import SupervisedProblem
from torch import nn

from ctta.evaluation import default_evaluator
from ctta.utils import resolve_device, trainable_parameters

__all__ = [
    "DEFAULT_EVALUATOR",
    "TEMPLATE_FIELDS",
    "AvalancheSupervised",
    "StrategyBase",
    "default_evaluator",
    "restrict_to_trainable",
]

#: config field -> the template argument it fills when that argument is not given
TEMPLATE_FIELDS = {
    "batch_size": "train_mb_size",
    "eval_batch_size": "eval_mb_size",
    "epochs": "train_epochs",
    "eval_every": "anytime_eval_every",
}

#: Avalanche's template arguments (``SupervisedTemplate``) and ctta's common ones
AVALANCHE_ARGS = (
    "model", "optimizer", "criterion", "train_mb_size", "train_epochs", "eval_mb_size", "device", "plugins",
    "evaluator", "eval_every", "peval_mode",
)  # fmt: skip


class _DefaultEvaluator:
    """Sentinel: the strategy's default evaluator (Avalanche's default plus the method's ctta metrics)."""

    def __repr__(self) -> str:
        return "DEFAULT_EVALUATOR"


DEFAULT_EVALUATOR: Any = _DefaultEvaluator()


def restrict_to_trainable(optimizer: torch.optim.Optimizer, model: nn.Module, reset_state: bool) -> None:
    """Point ``optimizer`` at the trainable parameters of ``model`` only (one param group is kept per group).

    The optimizer keeps its type and hyper-parameters; parameters it did not hold join its first group.
    """
    params = trainable_parameters(model)
    if not params:
        raise RuntimeError(f"{type(model).__name__} has no trainable parameters (requires_grad=True)")
    ids = {id(p) for p in params}
    groups = optimizer.param_groups
    owned = [q for g in groups for q in g["params"] if id(q) in ids]
    missing = [p for p in params if id(p) not in {id(q) for q in owned}]
    for g in groups:
        g["params"] = [q for q in g["params"] if id(q) in ids]
    groups[0]["params"].extend(missing)
    optimizer.param_groups[:] = [g for g in groups if g["params"]] or groups[:1]
    if reset_state:
        optimizer.state.clear()


def split_arguments(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(Avalanche's template arguments, the rest)`` of a constructor's keyword arguments."""
    template = {k: kwargs.pop(k) for k in AVALANCHE_ARGS if k in kwargs}
    return template, kwargs


def placeholder_optimizer() -> torch.optim.Optimizer:
    """What ``SupervisedTemplate`` holds until the method builds its optimiser (before the first experience)."""
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.0)


class AvalancheSupervised(BatchObservation, SupervisedProblem, BaseSGDTemplate):
    """Avalanche's ``SupervisedTemplate`` without its ``SGDUpdate`` loop (same observation, problem, callbacks and
    plugins): ctta's templates own their loop (``train_experience``) and their update (``sgd_update``)."""

    PLUGIN_CLASS = SupervisedPlugin


class StrategyBase:
    """Mixin (before ``AvalancheSupervised``) holding what every ctta strategy shares: config resolution, argument
    checks, the default evaluator and ``from_config``.

    Class attributes:
        config_class: the method's config dataclass (its fields are the method's keyword arguments).
        distributed_ok, resumable, adapts_in_eval, records_epochs, zero_shot: the optional capabilities the runner
            relies on (declared, never guessed); ``eval_after_experience`` and ``pregenerate`` are the optional
            steps, with defaults.
        optimizer_refusal: why a user ``optimizer`` cannot be used (None: it is used, re-pointed at the trainable
            parameters; ``optimizer=None`` = the method's reference optimiser from its config).
        criterion_refusal: why a user ``criterion`` cannot be used (None: it is used).
        train_epochs_refusal: why ``train_epochs`` must be 1 (None: the method uses it).

    ``check_resources(cfg)`` (classmethod) is the optional early check of user-supplied files, called by the
    runner before anything loads.
    """

    config_class: ClassVar[type | None] = None
    optimizer_refusal: ClassVar[str | None] = None
    criterion_refusal: ClassVar[str | None] = None
    train_epochs_refusal: ClassVar[str | None] = None
    # declared capabilities (read by the runner; a template or method turns them on)
    distributed_ok: ClassVar[bool] = False  #: torchrun runs are exact (sharded updates / sharded samples)
    resumable: ClassVar[bool] = False  #: ``checkpoint_state`` / ``load_checkpoint_state`` resume mid-stream
    adapts_in_eval: ClassVar[bool] = False  #: test-time adaptation: a run evaluates the test stream, no training
    records_epochs: ClassVar[bool] = False  #: a run records the per-epoch training loss and top-1 (few-shot epochs)
    zero_shot: ClassVar[bool] = False  #: needs no training: a benchmark without train stream is evaluated directly

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        criterion=None,
        train_mb_size: int = 1,
        train_epochs: int = 1,
        eval_mb_size: int | None = 1,
        device: str | torch.device = "auto",
        plugins=None,
        evaluator=DEFAULT_EVALUATOR,
        eval_every: int = -1,
        peval_mode: str = "epoch",
    ) -> None:
        """Avalanche's ``SupervisedTemplate`` arguments, with ctta's defaults: ``optimizer=None`` holds a placeholder
        until the method builds its optimiser, ``criterion=None`` is cross-entropy, ``device="auto"`` picks CUDA when
        present, and the default ``evaluator`` adds the method's ctta metrics to Avalanche's default."""
        super().__init__(
            model=model,
            optimizer=optimizer if optimizer is not None else placeholder_optimizer(),
            criterion=criterion if criterion is not None else nn.CrossEntropyLoss(),
            train_mb_size=train_mb_size,
            train_epochs=train_epochs,
            eval_mb_size=eval_mb_size,
            device=resolve_device(device),
            plugins=plugins,
            evaluator=self.resolve_evaluator(evaluator, getattr(self, "cfg", None)),
            eval_every=eval_every,
            peval_mode=peval_mode,
        )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Avalanche wraps every template's ``__init__`` to check argument names against the signatures of the
        class's MRO, which cannot know a method's config fields passed through ``**kwargs`` to its template; ctta
        checks them itself (``resolve_config`` raises ``TypeError`` naming the valid ones), so the wrapper is
        removed (constructors are keyword-only)."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and hasattr(init, "__wrapped__"):
            cls.__init__ = init.__wrapped__

    # ------------------------------------------------------------------ arguments
    @classmethod
    def config_fields(cls) -> tuple[str, ...]:
        if cls.config_class is None:
            return ()
        return tuple(f.name for f in dataclasses.fields(cls.config_class) if f.init)

    @classmethod
    def resolve_config(cls, config, method_kwargs: dict[str, Any], extra_valid: Iterable[str] = ()):
        """``config`` (or the default config) with ``method_kwargs`` applied; unknown names raise ``TypeError``."""
        fields = set(cls.config_fields())
        fields.discard("eval_every")  # ``eval_every`` is Avalanche's argument; ctta's is ``anytime_eval_every``
        unknown = sorted(k for k in method_kwargs if k not in fields)
        if unknown:
            valid = sorted({*AVALANCHE_ARGS, *extra_valid, *fields})
            raise TypeError(f"{cls.__name__}() got unexpected keyword argument(s) {unknown}; valid: {valid}")
        if cls.config_class is None:
            return None
        if config is None:
            config = cls.config_class()
        elif not isinstance(config, cls.config_class):
            want, got = cls.config_class.__name__, type(config).__name__
            raise TypeError(f"{cls.__name__}: config must be a {want}, got {got}")
        return dataclasses.replace(config, **method_kwargs) if method_kwargs else config

    @classmethod
    def check_arguments(cls, optimizer, criterion, train_epochs) -> None:
        """Refuse what the method cannot honour (see the class attributes)."""
        if optimizer is not None and cls.optimizer_refusal:
            raise ValueError(f"{cls.__name__} does not take an optimizer: {cls.optimizer_refusal}")
        if criterion is not None and cls.criterion_refusal:
            raise ValueError(f"{cls.__name__} does not take a criterion: {cls.criterion_refusal}")
        if cls.train_epochs_refusal and train_epochs not in (None, 1):
            raise ValueError(f"{cls.__name__}: train_epochs must be 1, got {train_epochs}: {cls.train_epochs_refusal}")

    @classmethod
    def template_arguments(cls, cfg, given: dict[str, Any], defaults: dict[str, int]) -> dict[str, int]:
        """The one place where config fields become template arguments (``TEMPLATE_FIELDS``): for each argument
        in ``defaults``, the value ``given`` explicitly, else the config's field, else the default."""
        fields = {arg: field for field, arg in TEMPLATE_FIELDS.items()}
        return {arg: int(cls.from_cfg(given.get(arg), cfg, fields[arg], d)) for arg, d in defaults.items()}

    @staticmethod
    def from_cfg(value, cfg, field: str, default=None):
        """An explicit argument, else the config's field, else ``default``."""
        if value is not None:
            return value
        v = getattr(cfg, field, None) if cfg is not None else None
        return default if v is None else v

    # ------------------------------------------------------------------ evaluation
    @classmethod
    def extra_metrics(cls, cfg) -> tuple:
        """ctta metrics the runner adds to its evaluator for this method (e.g. TPT's top-5)."""
        return ()

    @classmethod
    def check_resources(cls, cfg) -> None:
        """Check the files and settings the user must supply for config ``cfg`` (description banks, replay logs, a
        local model folder, an API key's variable) without loading anything; the runner calls it before data,
        weights or the output folder. Raises the loader's own error (``FileNotFoundError`` naming the official
        location, ``ValueError``). Default: nothing to check."""

    @classmethod
    def metrics(cls, config=None) -> list:
        """Every ctta metric of the method (what the default evaluator adds to Avalanche's), for a user
        ``EvaluationPlugin``: ``EvaluationPlugin(accuracy_metrics(stream=True), *MVP.metrics(), loggers=[...])``."""
        return list(cls.extra_metrics(config if config is not None else cls.default_config()))

    @classmethod
    def default_config(cls):
        return cls.config_class() if cls.config_class is not None else None

    @classmethod
    def resolve_evaluator(cls, evaluator, cfg):
        """Avalanche's meaning, except the default: ``ctta.evaluation.default_evaluator`` (Avalanche's default
        evaluator, its logger, ctta's anytime accuracy) plus the method's ``extra_metrics(cfg)``."""
        if isinstance(evaluator, _DefaultEvaluator):
            return default_evaluator(cls.extra_metrics(cfg if cfg is not None else cls.default_config()))
        return evaluator

    # ------------------------------------------------------------------ the training loop
    def train(self, experiences, eval_streams=None, **kwargs: Any):
        """Avalanche's ``train``: the same callbacks in the same order, the last metrics returned; each experience
        runs the template's own loop, ``train_experience``."""
        self.check_train_arguments(kwargs)
        experiences = self._start_training(experiences, eval_streams)
        self._before_training(**kwargs)
        for self.experience in experiences:
            self._before_training_exp(**kwargs)
            self.train_experience(**kwargs)
            self._after_training_exp(**kwargs)
        self._after_training(**kwargs)
        self._train_cleanup()
        return self.evaluator.get_last_metrics()

    def _start_training(self, experiences, eval_streams) -> Iterable:
        """Avalanche's set-up of ``train``: plugin check, training mode, device, the eval streams by name."""
        if not self._distributed_check:
            self._check_distributed_training_compatibility()
            self._distributed_check = True
        self.is_training, self._stop_training = True, False
        self.model.train()
        self.model.to(self.device)
        experiences = _experiences_parameter_as_iterable(experiences)
        self._eval_streams = _group_experiences_by_stream([experiences] if eval_streams is None else eval_streams)
        return experiences

    def check_train_arguments(self, kwargs: dict[str, Any]) -> None:
        """Refuse ``train()`` keyword arguments the template cannot honour (before anything runs)."""

    def train_experience(self, **kwargs: Any) -> None:
        """The template's loop over ``self.experience`` (its data loader is ready), with Avalanche's callbacks."""
        raise NotImplementedError(f"{type(self).__name__}.train_experience")

    # ------------------------------------------------------------------ optional steps (the runner calls them)
    def eval_after_experience(self, benchmark, index: int):
        """The runner's evaluation after training experience ``index`` of ``benchmark`` (default: its test
        stream; a template that evaluates inside ``train()`` does nothing)."""
        return self.eval(benchmark.test_stream)

    def pregenerate(self, exp_list, rank: int = 0, world_size: int = 1) -> int | None:
        """``ctta generate``: prepare cached inputs of ``exp_list`` ahead of a run (this shard of them); returns
        the number generated, or None when the strategy has nothing to pre-generate (the default)."""
        return None

    def run_artifacts(self) -> dict[str, Any]:
        """Extra run outputs ``{name: JSON-able data}`` the runner writes as ``<out_dir>/<name>.json`` after the run
        (e.g. a search history) and lists under ``"artifacts"`` in results.json; default: none."""
        return {}

    def plot_artifact(self, name: str, path) -> bool:
        """Draw artifact ``name`` as a PNG at ``path`` (with ``log.plot``); True when drawn. Default: no plot."""
        return False

    # ------------------------------------------------------------------ runner entry
    @classmethod
    def benchmark_kwargs(cls, cfg, benchmark) -> dict[str, Any]:
        """Constructor arguments taken from a benchmark's ``BenchmarkInfo`` (``benchmark_info(benchmark)``)."""
        return {}

    @classmethod
    def from_config(cls, cfg, *, backbone, benchmark, device, evaluator, plugins=(), precision="auto"):
        """Build the strategy from its config on a built benchmark and backbone (``ctta run``).

        ``evaluator=None`` here means ctta's quiet default (``ctta.evaluation.make_evaluator``).
        """
        if evaluator is None:
            from ctta.evaluation import make_evaluator

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                evaluator = make_evaluator(extra_metrics=cls.extra_metrics(cfg))
        return cls(
            model=backbone, config=cfg, device=device, plugins=list(plugins), evaluator=evaluator,
            precision=precision, **cls.benchmark_kwargs(cfg, benchmark),
        )  # fmt: skip
