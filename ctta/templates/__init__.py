"""Avalanche templates for online continual learning and test-time adaptation.

Both add one level on Avalanche's ``SupervisedTemplate`` (DESIGN.md: shallow inheritance):

* ``OnlineCLTemplate``: consumes an experience in stream order, one incoming batch at a time, with
  ``online_iters`` optimiser updates per batch (Si-Blurry protocol, spec si-blurry-mvp.md §4). Classes are
  exposed before the batch's first update; head row ``k`` belongs to the ``k``-th exposed class. Anytime
  evaluation runs every ``eval_every`` samples and at the end of each ``train()`` call (task end).
* ``TestTimeTemplate``: adapts inside ``eval()`` (Avalanche runs eval under ``no_grad``; adaptation runs under
  ``enable_grad``), restoring the saved state after each mini-batch in episodic mode.
* ``ctta.distributed.ShardedTraining`` (a mixin of both, also used by MULTI-LANE and DAM-VP): under torchrun each
  rank runs the network on its rows of the global batch and the loss on the gathered global batch.

Avalanche facts relied on (spec avalanche.md §3): keyword-only constructors, ``make_optimizer`` must be
overridden to keep trainable parameters only, ``eval()`` saves and restores the training state so it can be
called from a training hook, ``_unpack_minibatch`` moves every batch element to the device.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from avalanche.training.plugins import EvaluationPlugin, SupervisedPlugin
from avalanche.training.templates import SupervisedTemplate
from torch import nn

from ctta import distributed
from ctta.data.replay import ReservoirMemory
from ctta.distributed import ShardedTraining
from ctta.scenarios_common import single_experience_stream
from ctta.utils import autocast, resolve_device, rng_state, set_rng_state, trainable_parameters


def _restrict_to_trainable(optimizer: torch.optim.Optimizer, model: nn.Module, reset_state: bool) -> None:
    """Point ``optimizer`` at the trainable parameters of ``model`` only (one param group is kept per group)."""
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


def _default_evaluator() -> EvaluationPlugin:
    from ctta.logging import make_evaluator

    return make_evaluator()


class OnlineCLTemplate(ShardedTraining, SupervisedTemplate):
    """Online class-incremental template: ``online_iters`` updates per incoming batch, in stream order.

    Subclasses implement ``forward_logits()`` -> ``(B, num_classes)`` logits over exposed POSITIONS and may
    override ``criterion()`` (default: CE of ``mb_logits_pos`` against ``mb_y_pos``) and ``augment(x)``.
    """

    applies_seen_mask = False  # set True if forward_logits already adds ``seen_mask()``
    distributed_ok = True  # torchrun: exact sharded updates (``loss_inputs`` must list what criterion() reads)

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        num_classes: int,
        online_iters: int = 3,
        train_mb_size: int = 64,
        eval_mb_size: int = 128,
        eval_every: int = 1000,
        eval_dataset=None,
        device: str | torch.device = "auto",
        plugins=None,
        evaluator=None,
        precision: str = "auto",
        train_augment=None,
        memory_size: int = 0,
        memory_batch_size: int = 32,
        **kwargs: Any,
    ) -> None:
        if num_classes <= 0 or online_iters < 1 or train_mb_size < 1:
            raise ValueError(
                f"need num_classes > 0, online_iters >= 1, train_mb_size >= 1; got "
                f"{num_classes}, {online_iters}, {train_mb_size}"
            )
        plugins = list(plugins or [])
        if eval_dataset is not None:  # first, so checkpoints taken by later plugins include this batch's eval
            plugins.insert(0, AnytimeEvalPlugin(eval_dataset, eval_every))
        super().__init__(
            model=model,
            optimizer=optimizer,
            criterion=nn.CrossEntropyLoss(),
            train_mb_size=train_mb_size,
            train_epochs=1,
            eval_mb_size=eval_mb_size,
            device=resolve_device(device),
            plugins=plugins,
            evaluator=evaluator if evaluator is not None else _default_evaluator(),
            **kwargs,
        )
        self.num_classes = int(num_classes)
        self.online_iters = int(online_iters)
        self.precision = precision
        self.train_augment = train_augment  # batch augmentation from the scenario (e.g. Si-Blurry's, spec §3)
        self.memory = ReservoirMemory(memory_size)  # replay (spec si-blurry §8); 0 = rehearsal-free
        self.memory_batch_size = int(memory_batch_size)
        self._stream_batch: list[torch.Tensor] | None = None  # the incoming batch, without replayed rows
        self._exp_offset = 0  # stream position inside the current experience (memory references)
        self.exposed: list[int] = []
        self.class_to_pos = torch.full((self.num_classes,), -1, dtype=torch.long)
        self.seen_samples = 0
        self.eval_kind: str | None = None  # "periodic" | "task_end" | None (manual eval)
        self.mb_logits_pos: torch.Tensor | None = None
        self._optimizer_ready = False
        self.exp_index = -1  # experiences started (train() calls)
        self.batches_done = 0  # incoming batches consumed in the current experience
        self.exp_done = False
        self._skip_batches = 0  # set when resuming mid-experience
        self._resume_rng: dict[str, Any] | None = None

    # ------------------------------------------------------------------ label bookkeeping
    def expose(self, y: torch.Tensor) -> None:
        """Append the unseen labels of ``y`` to ``exposed`` in first-appearance order (before any update)."""
        for c in y.detach().cpu().tolist():
            if not 0 <= c < self.num_classes:
                raise ValueError(f"label {c} outside [0, {self.num_classes}) (num_classes={self.num_classes})")
            if self.class_to_pos[c] < 0:
                self.class_to_pos[c] = len(self.exposed)
                self.exposed.append(c)

    def seen_mask(self) -> torch.Tensor:
        """``(num_classes,)`` additive mask over positions: 0 for exposed positions, -inf beyond."""
        m = torch.full((self.num_classes,), float("-inf"), device=self.device)
        m[: len(self.exposed)] = 0.0
        return m

    @property
    def mb_y_pos(self) -> torch.Tensor:
        """Current labels as exposed positions (head rows)."""
        return self.class_to_pos.to(self.mb_y.device)[self.mb_y]

    def positions_to_classes(self, logits_pos: torch.Tensor) -> torch.Tensor:
        """Re-index ``(B, num_classes)`` position logits to original class ids (-inf for unexposed classes)."""
        out = logits_pos.new_full(logits_pos.shape, float("-inf"))
        n = len(self.exposed)
        if n:
            idx = torch.tensor(self.exposed, device=logits_pos.device)
            out[:, idx] = logits_pos[:, :n]
        return out

    # ------------------------------------------------------------------ hooks for subclasses
    def forward_logits(self) -> torch.Tensor:
        """``(B, num_classes)`` logits over exposed positions for ``self.mb_x``."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward_logits()")

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """Training-time batch augmentation, re-drawn at every update (``train_augment`` or identity)."""
        return x if self.train_augment is None else self.train_augment(x)

    def forward(self) -> torch.Tensor:
        ctx = distributed.context()
        if not ctx.active or self.is_training:  # distributed training shards in ``_one_update``
            return self._forward_local()
        out = self.on_shard(self._forward_local_or_empty, ctx)  # evaluation: each rank scores its rows
        return distributed.all_gather_cat(out, live=False)  # logits in batch order

    def _forward_local_or_empty(self) -> torch.Tensor:
        if not len(self.mb_x):
            return torch.zeros(0, self.num_classes, device=self.device)
        return self._forward_local()

    def _forward_local(self) -> torch.Tensor:
        with autocast(self.device, self.precision):
            logits = self.forward_logits()
        logits = logits.float()
        if not self.applies_seen_mask:
            logits = logits + self.seen_mask()
        self.mb_logits_pos = logits
        return self.positions_to_classes(logits)

    def criterion(self) -> torch.Tensor:
        if not self.is_training:
            return F.cross_entropy(self.mb_output.clamp_min(-1e4), self.mb_y)
        return F.cross_entropy(self.mb_logits_pos, self.mb_y_pos)

    # ------------------------------------------------------------------ optimiser and loop
    def make_optimizer(self, reset_optimizer_state: bool = False, **kwargs: Any) -> None:
        """Trainable parameters only; the optimiser state is created once and kept across experiences."""
        _restrict_to_trainable(self.optimizer, self.model, reset_state=not self._optimizer_ready)
        self._optimizer_ready = True

    def check_model_and_optimizer(self, **kwargs: Any) -> None:
        self.model = self.model_adaptation()
        self.make_optimizer()

    def make_train_dataloader(self, shuffle: bool = False, **kwargs: Any) -> None:
        """Stream order is the protocol: never shuffle."""
        kwargs.pop("shuffle", None)
        super().make_train_dataloader(shuffle=False, **kwargs)

    def _before_training_exp(self, **kwargs: Any) -> None:
        self.exp_index += 1
        self.batches_done, self.exp_done, self._exp_offset = 0, False, 0
        super()._before_training_exp(**kwargs)

    def _after_training_exp(self, **kwargs: Any) -> None:
        self.exp_done = True
        super()._after_training_exp(**kwargs)

    def training_epoch(self, **kwargs: Any) -> None:
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
                self._one_update(**kwargs)
            n = len(stream[0])
            self.mbatch = list(stream)  # plugins see the stream batch (replayed rows dropped)
            if self.mb_output is not None:
                self.mb_output = self.mb_output[:n]
            self.memory.add(self.experience.dataset, range(self._exp_offset, self._exp_offset + n), tag=self.exp_index)
            self._exp_offset += n
            self.after_incoming_batch()
            self.seen_samples += n
            self.batches_done += 1
            self._after_training_iteration(**kwargs)

        self._restore_resume_rng()

    def _restore_resume_rng(self) -> None:
        """Resuming mid-experience: the checkpoint's RNG state is set once the data iterator exists, because
        creating it draws a seed from the global RNG (it had been drawn before the checkpoint was taken)."""
        if self._resume_rng is not None:
            set_rng_state(self._resume_rng)
            self._resume_rng = None

    def replay_batch(self, stream: list[torch.Tensor]) -> list[torch.Tensor]:
        """The update batch: the stream batch plus a fresh draw of ``memory_batch_size`` replayed samples."""
        if not len(self.memory) or self.memory_batch_size <= 0:
            return list(stream)
        mem = self.memory.sample(self.memory_batch_size)
        return [torch.cat([b, m.to(b)]) for b, m in zip(stream, mem)]  # (B + M, ...)

    def _one_update(self, **kwargs: Any) -> None:
        self.optimizer.zero_grad()
        self.loss = self._make_empty_loss()
        ctx = distributed.context()
        self._before_forward(**kwargs)
        if ctx.active:  # this rank's rows of the global update batch (ctta/distributed.py)
            local = self.on_shard(self.forward, ctx)
            self.mb_output = distributed.all_gather_cat(local.detach(), live=False)
        else:
            self.mb_output = self.forward()
        self._after_forward(**kwargs)
        self.loss += self.distributed_loss(ctx) if ctx.active else self.criterion()
        self._before_backward(**kwargs)
        self.backward()
        self._after_backward(**kwargs)
        self._before_update(**kwargs)
        self.optimizer_step()
        self._after_update(**kwargs)

    def after_incoming_batch(self) -> None:
        """Called once per incoming batch after its updates (e.g. replay-memory update)."""

    def loss_inputs(self) -> dict[str, Any]:
        """What ``criterion()`` reads per sample (distributed runs gather it); override with ``criterion``."""
        return {"mb_logits_pos": self.mb_logits_pos}

    # ------------------------------------------------------------------ checkpointing (plain state dicts)
    def extra_state(self) -> dict[str, Any]:
        """Strategy-specific state to checkpoint (e.g. a replay memory); override with ``load_extra_state``."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``extra_state`` returned."""

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything needed to resume: trainable params + buffers, optimiser, bookkeeping, metrics, RNG."""
        m = self.model
        model_state = {n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad}
        model_state |= {n: b.detach().clone() for n, b in m.named_buffers()}
        return {
            "model": model_state,
            "optimizer": self.optimizer.state_dict(),
            "exposed": list(self.exposed),
            "seen_samples": self.seen_samples,
            "position": {"exp_index": self.exp_index, "batches_done": self.batches_done, "exp_done": self.exp_done},
            "plugins": {type(p).__name__: p.state_dict() for p in self.plugins if hasattr(p, "state_dict")},
            "metrics": {type(x).__name__: x.state_dict() for x in self.evaluator.metrics if hasattr(x, "state_dict")},
            "memory": self.memory.state_dict(),
            "extra": self.extra_state(),
            "rng": rng_state(),
        }

    def load_checkpoint_state(self, state: dict[str, Any], train_stream=None) -> int:
        """Restore a ``checkpoint_state``; returns the index of the experience to (re)enter.

        Args:
            state: what ``checkpoint_state`` returned.
            train_stream: the run's training stream (needed to re-attach a replay memory's samples: the memory
                stores ``(experience index, row)`` references).
        """
        named = dict(self.model.named_parameters()) | dict(self.model.named_buffers())
        with torch.no_grad():
            for n, v in state["model"].items():
                named[n].copy_(v)
        self.make_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.exposed = []
        self.class_to_pos.fill_(-1)
        self.expose(torch.tensor(state["exposed"], dtype=torch.long))
        self.seen_samples = int(state["seen_samples"])
        for p in self.plugins:
            if type(p).__name__ in state["plugins"]:
                p.load_state_dict(state["plugins"][type(p).__name__])
        for x in self.evaluator.metrics:
            if type(x).__name__ in state["metrics"]:
                x.load_state_dict(state["metrics"][type(x).__name__])
        mem = state.get("memory")
        if mem is not None and (mem["items"] or self.memory.capacity):
            if mem["items"] and train_stream is None:
                raise ValueError("this checkpoint holds a replay memory: pass the training stream to load it")
            self.memory.load_state_dict(mem, lambda exp_index: train_stream[exp_index].dataset)
        self.load_extra_state(state["extra"])
        set_rng_state(state["rng"])
        pos = state["position"]
        if pos["exp_done"]:
            self.exp_index = pos["exp_index"]
            return pos["exp_index"] + 1
        self.exp_index, self._skip_batches = pos["exp_index"] - 1, pos["batches_done"]
        self._resume_rng = state["rng"]  # set again after the experience's data iterator draws its seed
        return pos["exp_index"]

    @staticmethod
    def online_kwargs(cfg, benchmark, *, device, evaluator, plugins=(), precision="auto") -> dict[str, Any]:
        """Constructor arguments every online strategy takes from its config and the benchmark.

        Reads ``cfg.online_iters``, ``cfg.batch_size`` (None: the benchmark's ``batch_size``, else 64),
        ``cfg.eval_batch_size``, ``cfg.eval_every`` and, when present, ``cfg.memory_size`` /
        ``cfg.memory_batch_size``; from the benchmark ``n_classes``, ``test_dataset`` and ``train_augment``.
        """
        return {
            "num_classes": benchmark.n_classes,
            "online_iters": cfg.online_iters,
            "train_mb_size": getattr(cfg, "batch_size", None) or getattr(benchmark, "batch_size", 64),
            "eval_mb_size": cfg.eval_batch_size,
            "eval_every": cfg.eval_every,
            "eval_dataset": getattr(benchmark, "test_dataset", None),
            "train_augment": getattr(benchmark, "train_augment", None),
            "memory_size": getattr(cfg, "memory_size", 0),
            "memory_batch_size": getattr(cfg, "memory_batch_size", 32),
            "device": device,
            "plugins": plugins,
            "evaluator": evaluator,
            "precision": precision,
        }

    @classmethod
    def from_config(cls, cfg, *, backbone, benchmark, device, evaluator, plugins=(), precision="auto"):
        raise NotImplementedError(f"{cls.__name__}.from_config is not implemented")


class AnytimeEvalPlugin(SupervisedPlugin, supports_distributed=True):
    """Periodic (every ``every`` samples) and task-end evaluation on the test images of exposed classes.

    Implements the Si-Blurry rule (spec si-blurry-mvp.md §4): after each incoming batch, if
    ``seen_samples > num_eval``, evaluate once and advance ``num_eval`` by ``every``; the recorded x-value
    is the nominal ``num_eval``. After each ``train()`` call (a task) a task-end evaluation always runs.
    """

    def __init__(self, eval_dataset, every: int = 1000) -> None:
        super().__init__()
        targets = getattr(eval_dataset, "targets", None)
        if targets is None:
            raise ValueError("eval_dataset needs a .targets attribute (use ctta.data.avl.as_avl_dataset)")
        self.dataset = eval_dataset
        self.targets = torch.as_tensor(list(targets))
        self.every = int(every)
        self.num_eval = self.every
        self.history: list[tuple[str, int, float]] = []  # (kind, x, accuracy)

    def _evaluate(self, strategy: OnlineCLTemplate, kind: str, x: int) -> None:
        exposed = torch.tensor(strategy.exposed, dtype=self.targets.dtype)
        idx = torch.nonzero(torch.isin(self.targets, exposed)).flatten().tolist()
        if not idx:
            return
        stream = single_experience_stream(self.dataset.subset(idx), "test_seen")
        strategy.eval_kind, strategy.eval_x = kind, x
        saved = strategy.mbatch, strategy.mb_output, strategy.loss  # eval() clears them; later plugins need them
        try:
            strategy.eval(stream)
        finally:
            strategy.eval_kind = None
            strategy.mbatch, strategy.mb_output, strategy.loss = saved

    def after_training_iteration(self, strategy: OnlineCLTemplate, **kwargs: Any) -> None:
        if self.every > 0 and strategy.seen_samples > self.num_eval:
            self._evaluate(strategy, "periodic", self.num_eval)
            self.num_eval += self.every

    def after_training_exp(self, strategy: OnlineCLTemplate, **kwargs: Any) -> None:
        if _is_task_end(strategy.experience):
            self._evaluate(strategy, "task_end", strategy.seen_samples)

    def state_dict(self) -> dict:
        return {"num_eval": self.num_eval}

    def load_state_dict(self, state: dict) -> None:
        self.num_eval = int(state["num_eval"])


def _is_task_end(exp) -> bool:
    """True for a whole-task experience, or for the last online sub-experience of a task."""
    if getattr(exp, "access_task_boundaries", False):
        return bool(getattr(exp, "is_last_subexp", True))
    return not hasattr(exp, "origin_experience")


class TestTimeTemplate(ShardedTraining, SupervisedTemplate):
    """Test-time adaptation inside ``eval()``: ``adapt_and_predict(mb_x)`` runs under ``enable_grad``.

    Episodic mode (the papers' setting) restores ``state_to_reset()`` after every mini-batch; continual mode
    keeps adapting. The initial state is captured on the first ``eval()`` call (or by ``snapshot()``).
    """

    __test__ = False  # not a pytest test class
    distributed_ok = True  # torchrun: samples sharded over ranks (episodic mode)

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        episodic: bool = True,
        eval_mb_size: int = 1,
        device: str | torch.device = "auto",
        plugins=None,
        evaluator=None,
        precision: str = "auto",
        **kwargs: Any,
    ) -> None:
        if optimizer is None:
            params = trainable_parameters(model) or [nn.Parameter(torch.zeros(()))]
            optimizer = torch.optim.SGD(params, lr=0.0)
        super().__init__(
            model=model,
            optimizer=optimizer,
            criterion=nn.CrossEntropyLoss(),
            train_mb_size=eval_mb_size,
            train_epochs=1,
            eval_mb_size=eval_mb_size,
            device=resolve_device(device),
            plugins=plugins,
            evaluator=evaluator if evaluator is not None else _default_evaluator(),
            **kwargs,
        )
        self.episodic = episodic
        self.precision = precision
        self._initial_state: dict[str, Any] | None = None

    def adapt_and_predict(self, x: torch.Tensor) -> torch.Tensor:
        """Adapt on ``x`` and return ``(B, C)`` logits. Implemented by strategies."""
        raise NotImplementedError(f"{type(self).__name__} must implement adapt_and_predict()")

    def state_to_reset(self) -> dict[str, Any]:
        """What episodic mode restores: trainable parameters (cloned) and the optimiser state."""
        params = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        return {"params": params, "optimizer": _clone_state(self.optimizer.state_dict())}

    def load_reset_state(self, state: dict[str, Any]) -> None:
        named = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, v in state["params"].items():
                named[n].copy_(v)
        self.optimizer.load_state_dict(_clone_state(state["optimizer"]))

    def snapshot(self) -> None:
        """Capture the current state as the one episodic mode returns to."""
        self._initial_state = self.state_to_reset()

    def reset(self) -> None:
        if self._initial_state is None:
            raise RuntimeError("reset() before any snapshot(); call snapshot() or eval() first")
        self.load_reset_state(self._initial_state)

    def eval(self, exp_list, **kwargs: Any):
        if self._initial_state is None:
            self.snapshot()
        ctx = distributed.context()
        if not ctx.active:
            return super().eval(exp_list, **kwargs)
        distributed.require_episodic(type(self).__name__, self.episodic)
        per_rank, self.eval_mb_size = self.eval_mb_size, self.eval_mb_size * ctx.world  # one shard per rank
        try:
            return super().eval(exp_list, **kwargs)
        finally:
            self.eval_mb_size = per_rank

    def forward(self) -> torch.Tensor:
        ctx = distributed.context()
        if not ctx.active:
            return self._adapt_local(self.mb_x)
        # episodic: samples are independent, so sharding is exact; strategies see their rows (and labels)
        out = self.on_shard(lambda: self._adapt_local(self.mb_x) if len(self.mb_x) else torch.zeros(0), ctx)
        return distributed.all_gather_cat(out.to(self.device), live=False)  # sample order restored

    def _adapt_local(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            out = self.adapt_and_predict(x)
        if self.episodic:
            self.reset()
        return out.detach().float()

    def make_optimizer(self, **kwargs: Any) -> None:
        _restrict_to_trainable(self.optimizer, self.model, reset_state=False)

    def train(self, experiences, eval_streams=None, **kwargs: Any):
        """No training phase in test-time adaptation: adaptation happens in ``eval()``. Returns last metrics."""
        return self.evaluator.get_last_metrics()

    @classmethod
    def from_config(cls, cfg, *, backbone, benchmark, device, evaluator, plugins=(), precision="auto"):
        raise NotImplementedError(f"{cls.__name__}.from_config is not implemented")


def _clone_state(sd: Any) -> Any:
    if isinstance(sd, torch.Tensor):
        return sd.detach().clone()
    if isinstance(sd, dict):
        return {k: _clone_state(v) for k, v in sd.items()}
    if isinstance(sd, list):
        return [_clone_state(v) for v in sd]
    return sd
