"""The default evaluator (Avalanche's accuracy and loss plus ctta's metrics, with loggers) and the progress bar.

Run outputs (results.json, metrics.csv, the accuracy plot) are written by the runner (``ctta.runner.results``).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
from avalanche.logging import InteractiveLogger, TextLogger
from avalanche.training.plugins import EvaluationPlugin, SupervisedPlugin
from avalanche.training.plugins.evaluation import default_loggers
from tqdm.auto import tqdm

from ctta.metrics import AnytimeAccuracy


def default_evaluator(
    extra_metrics: Iterable = (),
    loggers: Sequence | Callable[[], Sequence] | None = default_loggers,
    f_last_variant: str = "official",
) -> EvaluationPlugin:
    """Avalanche's default evaluator plus ctta's metrics: what a strategy uses when no evaluator is given.

    Avalanche's own default (``avalanche.training.plugins.evaluation.default_evaluator``: accuracy and loss per
    epoch, experience and stream, logged by an ``InteractiveLogger`` on the main process) extended with ctta's
    anytime accuracy (A_auc / A_last / A_avg / F_last when the strategy runs anytime evaluations) and the
    strategy's own metrics.

    Args:
        extra_metrics: further ``PluginMetric`` instances, e.g. ``StrategyClass.extra_metrics(cfg)`` (TPT's
            top-5, MULTI-LANE's mAP / CF1 / OF1).
        loggers: Avalanche loggers (a sequence, or a callable returning one, as ``EvaluationPlugin`` accepts);
            the default is Avalanche's ``default_loggers`` (an ``InteractiveLogger`` on the main process), so a
            run is not silent. ``()`` logs nothing.
        f_last_variant: ``"official"`` (reference quirks) or ``"standard"`` F_last.

    Returns:
        a fresh ``EvaluationPlugin`` (never share one between strategies).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        return EvaluationPlugin(
            accuracy_metrics(minibatch=False, epoch=True, experience=True, stream=True),
            loss_metrics(minibatch=False, epoch=True, experience=True, stream=True),
            AnytimeAccuracy(f_last_variant),
            *extra_metrics,
            loggers=loggers if loggers is not None else [],
        )


LOGGER_NAMES = ("text", "csv", "tensorboard", "interactive")  # the runner's ``log.loggers`` choices


def make_loggers(names: Iterable[str], log_dir: str | Path | None) -> list:
    """Avalanche loggers by name: ``text`` (``log_dir/log.txt``), ``csv`` (``log_dir/csv/``, Avalanche's
    ``training_results.csv`` / ``eval_results.csv``), ``tensorboard`` (``log_dir/tensorboard/``), ``interactive``.

    File loggers need ``log_dir``; without it (non-main ranks) only ``interactive`` is made.
    """
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in LOGGER_NAMES]
    if unknown:
        raise ValueError(f"unknown logger(s) {unknown}; valid: {list(LOGGER_NAMES)}")
    loggers: list = []
    out = Path(log_dir) if log_dir is not None else None
    if out is not None and names:
        out.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name == "interactive":
            loggers.append(InteractiveLogger())
        elif out is None:
            continue
        elif name == "text":
            loggers.append(TextLogger(open(out / "log.txt", "a")))  # noqa: SIM115 (closed by close_loggers)
        elif name == "csv":
            from avalanche.logging import CSVLogger

            loggers.append(CSVLogger(str(out / "csv")))
        elif name == "tensorboard":
            from avalanche.logging import TensorboardLogger

            loggers.append(TensorboardLogger(out / "tensorboard"))
    return loggers


def close_loggers(evaluator: EvaluationPlugin) -> None:
    """Flush and close the files of ``evaluator``'s loggers (text, CSV, TensorBoard)."""
    for lg in evaluator.loggers:
        if isinstance(lg, TextLogger) and lg.file not in (sys.stdout, sys.stderr):
            lg.file.close()
        elif hasattr(lg, "close"):
            lg.close()
        elif hasattr(lg, "writer"):
            lg.writer.close()


def make_evaluator(
    log_dir: str | Path | None = None,
    interactive: bool = False,
    extra_metrics: Iterable = (),
    f_last_variant: str = "official",
    loggers: Iterable[str] = ("text",),
) -> EvaluationPlugin:
    """The runner's evaluator: top-1/loss, ctta's anytime metrics and the named loggers (see ``make_loggers``).

    ``interactive=True`` adds ``"interactive"`` to ``loggers``; file loggers write into ``log_dir`` (none if None).
    Scripts should prefer :func:`default_evaluator` (Avalanche's default metrics and loggers plus ctta's).
    """
    names = [*loggers, *(["interactive"] if interactive else [])]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        return EvaluationPlugin(
            accuracy_metrics(experience=True, stream=True),
            loss_metrics(stream=True),
            AnytimeAccuracy(f_last_variant),
            *extra_metrics,
            loggers=make_loggers(names, log_dir),
        )


def anytime_metric(evaluator: EvaluationPlugin) -> AnytimeAccuracy | None:
    """The ``AnytimeAccuracy`` instance attached to ``evaluator`` (None if absent)."""
    return next((m for m in evaluator.metrics if isinstance(m, AnytimeAccuracy)), None)


class ProgressPlugin(SupervisedPlugin, supports_distributed=True):
    """A tqdm bar over stream samples: training samples for CL, evaluated samples for test-time adaptation."""

    def __init__(self, total: int, desc: str = "stream", train: bool = True, enabled: bool = True) -> None:
        super().__init__()
        self.bar = tqdm(total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True)
        self.train = train
        self.curve: list[tuple[int, float]] = []  # (samples, running top-1) for test-time runs
        self._correct = self._n = 0
        self._next_point = 1

    def after_training_iteration(self, strategy, **kwargs) -> None:
        if self.train:
            self.bar.update(len(strategy.mb_y))
            self._postfix(strategy)

    def after_eval_iteration(self, strategy, **kwargs) -> None:
        if self.train:
            return
        y = strategy.mb_y
        self.bar.update(len(y))
        if y.ndim == 1:  # running top-1 over the test-time stream (multi-label runs use their own metrics)
            self._correct += int((strategy.mb_output.argmax(-1) == y).sum())
            self._n += len(y)
            if self._n >= self._next_point or self._n == self.bar.total:
                self.curve.append((self._n, self._correct / self._n))
                self._next_point = self._n + max(1, (self.bar.total or 100) // 100)
            self.bar.set_postfix(acc=f"{self._correct / max(self._n, 1):.3f}", refresh=False)

    def _postfix(self, strategy) -> None:
        m = anytime_metric(strategy.evaluator)
        if m is not None and (m.periodic or m.task_end):
            latest = max(m.periodic + m.task_end, key=lambda p: p[0])
            self.bar.set_postfix(acc=f"{latest[1]:.3f}", refresh=False)

    def close(self) -> None:
        self.bar.close()
