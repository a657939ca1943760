"""Run outputs: results.json, metrics.csv and the accuracy plot, written atomically into the run's folder.

Every run writes, in ``out_dir``: ``config.yaml`` (resolved), ``results.json`` (final metrics, the evaluation
history, the resolved config, package versions, weight tags, seed, timings), ``metrics.csv`` (one row per
evaluation) and ``accuracy.png`` (accuracy over the stream), plus Avalanche's ``log.txt``.
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
    atomic_write_text(out / "results.json", json.dumps(json_safe(payload), indent=2, allow_nan=False) + "\n")
    write_metrics_csv(out / "metrics.csv", rows)
    if plot:
        plot_accuracy(out / "accuracy.png", rows, title=str(results.get("title", "")))


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
