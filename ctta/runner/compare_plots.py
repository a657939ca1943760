"""The plots of ``ctta compare``, read from each finished cell's ``results.json``.

* ``compare_stream.png`` (continual protocols): accuracy over the stream (the periodic and task-end evaluations of
  ``results.json``'s ``history``, by stream samples) per method, the mean over seeds with a band of +/- one sample
  standard deviation; the seeds' curves are interpolated onto their evaluation points within the range they share
  (Si-Blurry's task ends differ by seed). One panel per dataset.
* ``compare_base_new.png`` (base-to-new few-shot protocols): base / new / HM accuracy bars per method, error bars
  over seeds.
* ``compare_corruptions.png`` (test-time adaptation over a corruption sequence): top-1 per corruption (one
  experience each, ``Top1_Acc_Exp`` of ``last_metrics``) per method, error bars over seeds.

A plot is written only when some cell has what it shows.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

EXP_PREFIX = "Top1_Acc_Exp/eval_phase/test_stream/Exp"
BASE_NEW = ("base_acc", "new_acc", "hm")


def _load(results: Sequence[Any]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """``{(row name, dataset): [results.json of each finished seed]}``."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        path = Path(r.cell.out_dir) / "results.json"
        if r.status == "failed" or not path.is_file():
            continue
        name = f"{r.cell.method} [{r.cell.variant}]" if r.cell.variant else r.cell.method
        groups[(name, r.cell.dataset)].append(json.loads(path.read_text()))
    return groups


def _curve(res: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    pts = sorted((r["samples"], r["accuracy"]) for r in res.get("history") or []
                 if r.get("kind") in ("periodic", "task_end") and r.get("accuracy") is not None)  # fmt: skip
    if not pts:
        return np.empty(0), np.empty(0)
    xs, ys = zip(*pts)
    return np.asarray(xs, float), 100 * np.asarray(ys, float)


def band(curves: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and sample std (0 for one curve) of curves interpolated onto their evaluation points in the shared range."""
    end = min(xs[-1] for xs, _ in curves)
    grid = np.unique(np.concatenate([xs[xs <= end] for xs, _ in curves]))
    ys = np.stack([np.interp(grid, xs, y) for xs, y in curves])
    return grid, ys.mean(0), ys.std(0, ddof=1) if len(curves) > 1 else np.zeros_like(grid)


def _figure(n_panels: int, width: float = 5.5):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n_panels, figsize=(width * n_panels, 3.8), dpi=110, squeeze=False)
    return plt, fig, axes[0]


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_stream(path: Path, groups: dict) -> Path | None:
    """Accuracy over the stream per method (mean over seeds, +/- std band), one panel per dataset."""
    curves = {k: [c for c in map(_curve, v) if len(c[0])] for k, v in groups.items()}
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None
    datasets = list(dict.fromkeys(d for _, d in curves))
    plt, fig, axes = _figure(len(datasets))
    for ax, ds in zip(axes, datasets):
        for i, ((name, _), cs) in enumerate((k, v) for k, v in curves.items() if k[1] == ds):
            x, mean, std = band(cs)
            ax.plot(x, mean, "-o", ms=3, color=f"C{i}", label=f"{name} (n={len(cs)})")
            ax.fill_between(x, mean - std, mean + std, color=f"C{i}", alpha=0.2, lw=0)
        ax.set(xlabel="stream samples", ylabel="accuracy (%)", ylim=(0, 100), title=ds)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(plt, fig, path)


def _bars(path: Path, table: dict[str, dict[str, dict[str, list[float]]]], ylabel: str) -> Path:
    """Grouped bars: ``table[dataset][group][method] = values over seeds`` (mean, error bar = sample std)."""
    plt, fig, axes = _figure(len(table), width=max(5.5, 1.2 * max(len(g) for g in table.values())))
    for ax, (ds, groups) in zip(axes, table.items()):
        names = list(dict.fromkeys(m for g in groups.values() for m in g))
        width = 0.8 / max(1, len(names))
        for i, name in enumerate(names):
            vals = [groups[g].get(name, []) for g in groups]
            means = [100 * np.mean(v) if v else 0 for v in vals]
            stds = [100 * np.std(v, ddof=1) if len(v) > 1 else 0 for v in vals]
            ax.bar(np.arange(len(groups)) + (i - (len(names) - 1) / 2) * width, means, width, yerr=stds,
                   capsize=2, color=f"C{i}", label=name)  # fmt: skip
        ax.set_xticks(np.arange(len(groups)), list(groups), rotation=20 if len(groups) > 4 else 0, fontsize=8)
        ax.set(ylabel=ylabel, ylim=(0, 105), title=ds)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_base_new(path: Path, groups: dict) -> Path | None:
    """Base / new / HM accuracy bars per method, one panel per dataset."""
    table: dict = defaultdict(lambda: {k: {} for k in BASE_NEW})
    for (name, ds), runs in groups.items():
        for key in BASE_NEW:
            vals = [r["summary"][key] for r in runs if (r.get("summary") or {}).get(key) is not None]
            if vals:
                table[ds][key][name] = vals
    table = {ds: g for ds, g in table.items() if any(g.values())}
    return _bars(path, table, "top-1 (%)") if table else None


def corruption_accuracies(res: dict[str, Any]) -> dict[str, float]:
    """``{corruption[ severity]: top-1}`` of a test-time run over a corruption sequence (empty otherwise)."""
    scen = (res.get("config") or {}).get("scenario") or {}
    corr, sev = list(scen.get("corruptions") or []), list(scen.get("severities") or [])
    names = [f"{c} {s}" if len(sev) > 1 else c for c in corr for s in sev]  # the scenario's order
    last = res.get("last_metrics") or {}
    accs = [last.get(f"{EXP_PREFIX}{k:03d}") for k in range(len(names))]
    return {} if not names or None in accs else dict(zip(names, accs))


def plot_corruptions(path: Path, groups: dict) -> Path | None:
    """Top-1 per corruption per method, one panel per dataset."""
    table: dict = defaultdict(lambda: defaultdict(dict))
    for (name, ds), runs in groups.items():
        for r in runs:
            for corr, acc in corruption_accuracies(r).items():
                table[ds][corr].setdefault(name, []).append(acc)
    return _bars(path, table, "top-1 (%)") if table else None


def write_plots(out: Path, results: Sequence[Any]) -> dict[str, Path]:
    """Every plot that some cell supports, ``{name: path}``."""
    groups = _load(results)
    made = {"stream plot": plot_stream(out / "compare_stream.png", groups),
            "base/new plot": plot_base_new(out / "compare_base_new.png", groups),
            "corruption plot": plot_corruptions(out / "compare_corruptions.png", groups)}  # fmt: skip
    return {k: p for k, p in made.items() if p is not None}
