"""Evaluator, progress bar and run outputs (results.json, metrics.csv, accuracy plot).

Every run writes, in ``out_dir``: ``config.yaml`` (resolved), ``results.json`` (final metrics, the evaluation
history, the resolved config, package versions, weight tags, seed, timings), ``metrics.csv`` (one row per
evaluation) and ``accuracy.png`` (accuracy over the stream), plus Avalanche's ``log.txt``.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
from avalanche.logging import InteractiveLogger, TextLogger
from avalanche.training.plugins import EvaluationPlugin, SupervisedPlugin
from tqdm.auto import tqdm

from ctta.metrics import AnytimeAccuracy

_PACKAGES = ("ctta", "torch", "torchvision", "timm", "avalanche-lib", "open_clip_torch", "diffusers", "numpy")


def make_evaluator(
    log_dir: str | Path | None = None,
    interactive: bool = False,
    extra_metrics: Iterable = (),
    f_last_variant: str = "official",
) -> EvaluationPlugin:
    """Avalanche ``EvaluationPlugin`` with top-1/loss, ctta's anytime metrics and a text log in ``log_dir``."""
    loggers = []
    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        loggers.append(TextLogger(open(Path(log_dir) / "log.txt", "a")))  # noqa: SIM115 (closed at exit)
    if interactive:
        loggers.append(InteractiveLogger())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        return EvaluationPlugin(
            accuracy_metrics(experience=True, stream=True),
            loss_metrics(stream=True),
            AnytimeAccuracy(f_last_variant),
            *extra_metrics,
            loggers=loggers,
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
        self._in_eval = 0
        self.curve: list[tuple[int, float]] = []  # (samples, running top-1) for test-time runs
        self._correct = self._n = 0
        self._next_point = 1

    def before_eval(self, strategy, **kwargs) -> None:
        self._in_eval += 1

    def after_eval(self, strategy, **kwargs) -> None:
        self._in_eval -= 1

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


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file in the same folder, then ``os.replace``)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_metrics_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys or ["kind", "samples", "accuracy"])
        w.writeheader()
        w.writerows(rows)


def plot_accuracy(path: str | Path, rows: Sequence[Mapping[str, Any]], title: str = "") -> None:
    """PNG of accuracy (y, %) over stream samples (x) for periodic and task-end evaluations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    for kind, style in (("periodic", "-o"), ("task_end", "s"), ("sample", "-")):
        pts = [(r["samples"], 100 * r["accuracy"]) for r in rows if r.get("kind") == kind]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, style, ms=3, label={"sample": "running top-1"}.get(kind, kind.replace("_", "-")))
    ax.set_xlabel("stream samples")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    if rows:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_results(out_dir: str | Path, results: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], plot=True):
    """Write results.json (atomically), metrics.csv and (optionally) accuracy.png into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = dict(results)
    payload.setdefault("versions", package_versions())
    payload["history"] = list(rows)
    atomic_write_text(out / "results.json", json.dumps(payload, indent=2, default=_json_default) + "\n")
    write_metrics_csv(out / "metrics.csv", rows)
    if plot:
        plot_accuracy(out / "accuracy.png", rows, title=str(results.get("title", "")))


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)
