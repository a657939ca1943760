"""Run outputs: results.json, metrics.csv and the accuracy plot, written atomically into the run's folder.

Every run writes, in ``out_dir``: ``config.yaml`` (resolved), ``results.json`` (final metrics, the evaluation
history, the resolved config, package versions, weight tags, seed, timings), ``metrics.csv`` (one row per
evaluation) and ``accuracy.png`` (accuracy over the stream), plus Avalanche's ``log.txt``. A strategy with run
artifacts (``run_artifacts()``, e.g. a discrete search's history) adds ``<name>.json`` / ``<name>.png`` files, listed
under ``"artifacts"`` in results.json (``write_artifacts``).

Few-shot (epoch-trained) CLIP prompt learners have no stream curve: their rows are the training loss and top-1 of
every epoch (``kind=train_epoch``, from Avalanche's epoch metrics that ``epoch_metrics`` adds to their evaluator) and
each evaluation's base / new / HM accuracy (``kind=base|new|hm``); their plot shows both (``plot_fewshot``).
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import tempfile
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from ctta.runner.checkpoint import umask_mode

#: Avalanche names of the per-epoch training curves (``epoch_metrics``) and of the base-to-new accuracies
#: (``ctta.clip_prompting.metrics.BaseNewAccuracy.NAMES``)
EPOCH_CURVES = {"loss": "Loss_Epoch/train_phase/train_stream", "accuracy": "Top1_Acc_Epoch/train_phase/train_stream"}
BASE_NEW = {
    "base": "Top1_Acc_Base/eval_phase/test_stream",
    "new": "Top1_Acc_New/eval_phase/test_new_stream",
    "hm": "Top1_Acc_HM/eval_phase/test_new_stream",
}
TEST_TOP1 = "Top1_Acc_Stream/eval_phase/test_stream"  # an epoch-trained run without base/new streams
_PACKAGES = ("ctta", "torch", "torchvision", "timm", "avalanche-lib", "open_clip_torch", "diffusers", "numpy")


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
        os.chmod(tmp, umask_mode())  # mkstemp creates 0600 files
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


def epoch_metrics() -> list:
    """Avalanche's per-epoch training loss and top-1 (for an epoch-trained method's evaluator)."""
    from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics

    return [*loss_metrics(epoch=True), *accuracy_metrics(epoch=True)]


def _history(evaluator, prefix: str) -> tuple[list, list]:
    """``(x, values)`` of the first logged metric whose name starts with ``prefix`` (empty if none)."""
    for name, (xs, values) in evaluator.get_all_metrics().items():
        if name.startswith(prefix):
            return list(xs), [float(v) for v in values]
    return [], []


def fewshot_rows(evaluator) -> list[dict[str, Any]]:
    """metrics.csv rows of an epoch-trained run: training loss / top-1 per epoch, then base / new / HM evaluations
    (a run without a base-to-new benchmark, e.g. class-incremental: its test-stream top-1, ``kind=test``).

    ``iterations`` is the training iteration at which the value was logged; ``epoch`` counts the epochs trained
    by then (over all experiences).
    """
    xs, losses = _history(evaluator, EPOCH_CURVES["loss"])
    _, accs = _history(evaluator, EPOCH_CURVES["accuracy"])
    rows: list[dict[str, Any]] = []
    for i, (x, loss) in enumerate(zip(xs, losses)):
        rows.append({"kind": "train_epoch", "epoch": i + 1, "iterations": x, "loss": loss,
                     "accuracy": accs[i] if i < len(accs) else None})  # fmt: skip
    evals = BASE_NEW if _history(evaluator, BASE_NEW["base"])[0] or not xs else {"test": TEST_TOP1}
    for kind, name in evals.items():
        last = dict(zip(*_history(evaluator, name)))  # one value per evaluation point (base is re-logged with new)
        for x, v in last.items():
            rows.append({"kind": kind, "epoch": sum(e <= x for e in xs), "iterations": x, "accuracy": v})
    return rows


def _plot_epochs(ax, rows: Sequence[Mapping[str, Any]]) -> None:
    epochs = [r for r in rows if r.get("kind") == "train_epoch"]
    if not epochs:
        ax.text(0.5, 0.5, "no training epochs", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    xs = [r["epoch"] for r in epochs]
    ax.plot(xs, [r["loss"] for r in epochs], "-o", ms=3, color="C3", label="training loss")
    ax.set(xlabel="epoch", ylabel="training loss", ylim=(0, 1.1 * max(r["loss"] for r in epochs)))
    ax.xaxis.get_major_locator().set_params(integer=True)
    acc = [(x, 100 * r["accuracy"]) for x, r in zip(xs, epochs) if r.get("accuracy") is not None]
    if acc:
        twin = ax.twinx()
        twin.plot(*zip(*acc), "-s", ms=3, color="C0", label="training top-1")
        twin.set(ylabel="training top-1 (%)", ylim=(0, 100))
        twin.legend(fontsize=8, loc="center right")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)


def plot_fewshot(path: str | Path, rows: Sequence[Mapping[str, Any]], title: str = "") -> None:
    """PNG of a few-shot run: training loss and top-1 per epoch (left), last base / new / HM accuracy (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(8.5, 3.6), dpi=110, gridspec_kw={"width_ratios": [3, 2]})
    _plot_epochs(left, rows)
    last = {r["kind"]: r["accuracy"] for r in rows if r.get("kind") in (*BASE_NEW, "test")}
    names = [k for k in (*BASE_NEW, "test") if k in last]
    bars = right.bar(names, [100 * last[k] for k in names], color=["C0", "C1", "C2"][: len(names)])
    right.bar_label(bars, fmt="%.1f", fontsize=8)
    right.set(ylabel="test top-1 (%)", ylim=(0, 105), title="last evaluation")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_accuracy(path: str | Path, rows: Sequence[Mapping[str, Any]], title: str = "") -> None:
    """PNG of accuracy (y, %) over stream samples (x) for periodic and task-end evaluations (a few-shot run's rows:
    ``plot_fewshot``)."""
    kinds = {r.get("kind") for r in rows}
    if kinds & {"train_epoch", *BASE_NEW} and not kinds & {"periodic", "task_end", "sample"}:
        return plot_fewshot(path, rows, title)
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
    atomic_write_text(out / "results.json", json.dumps(json_safe(payload), indent=2, allow_nan=False) + "\n")
    write_metrics_csv(out / "metrics.csv", rows)
    if plot:
        plot_accuracy(out / "accuracy.png", rows, title=str(results.get("title", "")))


_RESERVED = {"results", "metrics", "config", "accuracy", "log"}


def write_artifacts(out_dir: str | Path, strategy, plot: bool = True) -> list[str]:
    """Write the strategy's ``run_artifacts()`` as ``<name>.json`` (and ``<name>.png`` when ``plot`` and the
    strategy draws it, ``plot_artifact``) into ``out_dir``; returns the file names written (results.json lists them).

    Raises:
        ValueError: an artifact name that is not a plain file stem or clashes with a run output.
    """
    out, names = Path(out_dir), []
    out.mkdir(parents=True, exist_ok=True)
    for name, data in strategy.run_artifacts().items():
        if not name or Path(name).name != name or name.startswith(".") or name in _RESERVED:
            raise ValueError(f"artifact name {name!r}: a plain file stem other than {sorted(_RESERVED)}")
        atomic_write_text(out / f"{name}.json", json.dumps(json_safe(data), indent=1, allow_nan=False) + "\n")
        names.append(f"{name}.json")
        if plot and strategy.plot_artifact(name, out / f"{name}.png"):
            names.append(f"{name}.png")
    return names


def json_safe(o: Any) -> Any:
    """``o`` as plain JSON data: NaN/Infinity become ``None`` (JSON ``null``), tensors and arrays lists."""
    if isinstance(o, bool) or o is None or isinstance(o, (int, str)):
        return o
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, Mapping):
        return {str(k): json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple, set)):
        return [json_safe(v) for v in o]
    if hasattr(o, "tolist"):  # torch tensors, numpy arrays and scalars
        return json_safe(o.tolist())
    if isinstance(o, Path):
        return str(o)
    return str(o)
