"""Anytime (periodic) and task-end evaluation of an online strategy on the test images of exposed classes.

Si-Blurry rule (Moon et al., ICCV 2023, arXiv 2308.09303; reference moonjunyyy/Si-Blurry@c4024ce
``methods/er_baseline.py``): after each incoming batch, if ``seen_samples > num_eval``, evaluate once and advance
``num_eval`` by ``every``; the recorded x-value is the nominal ``num_eval``. After each task a task-end evaluation
always runs. The results reach the evaluator as ``AnytimeAccuracy`` (A_auc, A_last, F_last).
"""

from __future__ import annotations

from typing import Any

import torch
from avalanche.training.plugins import SupervisedPlugin

from ctta.benchmark_builders import single_experience_stream
from ctta.templates.benchmark_info import concat_datasets, infer_test_dataset, warn_once

__all__ = ["AnytimeEvalPlugin", "is_task_end"]


class AnytimeEvalPlugin(SupervisedPlugin, supports_distributed=True):
    """Periodic (every ``every`` stream samples; <= 0: task ends only) and task-end evaluation.

    Each evaluation runs ``strategy.eval`` on a one-experience stream named ``test_seen`` (the test images of the
    classes exposed so far), so Avalanche's stream metrics report it as ``.../eval_phase/test_seen_stream``.

    Args:
        eval_dataset: test set with ``.targets`` (an Avalanche dataset); None: found when training starts (the
            origin benchmark record's ``test_dataset``, else its ``test_stream``), else (with one warning) the
            ``eval_streams`` given to ``train()``, Avalanche's default being the training experiences seen so far.
        every: stream samples between periodic evaluations.
    """

    def __init__(self, eval_dataset=None, every: int = 1000) -> None:
        super().__init__()
        self.dataset = None
        self.targets: torch.Tensor | None = None
        self._fallback, self._fallback_ids, self._fallback_parts = False, set(), []
        if eval_dataset is not None:
            self.set_dataset(eval_dataset)
        self.every = int(every)
        self.num_eval = self.every
        self.history: list[tuple[str, int, float]] = []  # (kind, x, accuracy)

    def set_dataset(self, eval_dataset) -> None:
        targets = getattr(eval_dataset, "targets", None)
        if targets is None:
            raise ValueError("eval_dataset needs a .targets attribute (use ctta.data.avl.as_avl_dataset)")
        self.dataset = eval_dataset
        self.targets = torch.as_tensor(list(targets))

    def before_training_exp(self, strategy, **kwargs: Any) -> None:
        if self.dataset is not None and not self._fallback:
            return
        found = infer_test_dataset(strategy.experience)
        if found is not None:
            self.set_dataset(found)
            return
        # the eval_streams of this train() call, accumulated over calls (Avalanche's default: the training experience)
        training = False
        for group in getattr(strategy, "_eval_streams", None) or []:
            for exp in group:
                training = training or exp is strategy.experience or exp.dataset is strategy.experience.dataset
                if id(exp.dataset) not in self._fallback_ids:
                    self._fallback_ids.add(id(exp.dataset))
                    self._fallback_parts.append(exp.dataset)
        if not self._fallback_parts:
            warn_once(
                self, "no_eval_data",
                f"{type(strategy).__name__}: no test set for the anytime evaluation and train() got no eval_streams: "
                "A_auc / A_last are not computed; pass train(exp, eval_streams=[test_stream]) or anytime_eval_dataset=",
            )  # fmt: skip
            return
        self._fallback = True
        self.set_dataset(concat_datasets(self._fallback_parts))
        if training:
            warn_once(
                self, "no_test_set",
                f"{type(strategy).__name__}: no test set for the anytime evaluation (the benchmark's experiences do "
                "not reach a test stream), so it runs on the training experiences (Avalanche's default eval_streams). "
                "Pass train(exp, eval_streams=[test_stream]) or anytime_eval_dataset= to evaluate on test data.",
            )  # fmt: skip

    def _evaluate(self, strategy, kind: str, x: int) -> None:
        if self.dataset is None:
            return
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

    def after_training_iteration(self, strategy, **kwargs: Any) -> None:
        if self.every > 0 and strategy.seen_samples > self.num_eval:
            self._evaluate(strategy, "periodic", self.num_eval)
            self.num_eval += self.every

    def after_training_exp(self, strategy, **kwargs: Any) -> None:
        if is_task_end(strategy.experience):
            self._evaluate(strategy, "task_end", strategy.seen_samples)

    def state_dict(self) -> dict:
        return {"num_eval": self.num_eval}

    def load_state_dict(self, state: dict) -> None:
        self.num_eval = int(state["num_eval"])


def is_task_end(exp) -> bool:
    """True for a whole-task experience, or for the last online sub-experience of a task."""
    if getattr(exp, "access_task_boundaries", False):
        return bool(getattr(exp, "is_last_subexp", True))
    return not hasattr(exp, "origin_experience")
