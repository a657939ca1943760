"""The outputs of ``ctta compare``: a tidy CSV of every cell, mean +/- std tables (Markdown, LaTeX, terminal).

``cells.csv`` has one row per cell (method, dataset, variant, seed, status, action (ran, resumed, skipped),
seconds, out_dir, error, note (why a cell ran again, where it resumed)) and one column per summary metric.
The tables have one row per method (and sweep variant) and one column per dataset
and metric: the mean over the seeds that finished +/- their sample standard deviation (``ddof=1``; none with one
seed), in % (summary metrics are fractions), with ``(k/n)`` when only k of the n seeds finished and ``failed
(n/n)`` when none did; failed cells are listed under the table with their errors. The best mean of each column is
in bold (lowest for forgetting and losses). The columns are the metrics every finished cell shares; a grid whose
cells share none says so and shows every metric, ``-`` where a method has none.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BASE_COLUMNS = ("method", "dataset", "variant", "seed", "status", "action", "seconds", "out_dir", "error", "note")


def lower_is_better(metric: str) -> bool:
    """Forgetting (``F_*``, ``*forget*``) and losses are better low; every other summary metric high."""
    m = metric.lower()
    return m.startswith("f_") or "forget" in m or "loss" in m


def cell_rows(results: Sequence[Any]) -> list[dict[str, Any]]:
    """One flat row per ``CellResult`` (``BASE_COLUMNS`` then its summary metrics)."""
    rows = []
    for r in results:
        c = r.cell
        rows.append({"method": c.method, "dataset": c.dataset, "variant": c.variant, "seed": c.seed,
                     "status": r.status, "action": r.action, "seconds": round(r.seconds, 2), "out_dir": c.out_dir,
                     "error": r.error, "note": r.note, **r.summary})  # fmt: skip
    return rows


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """The tidy CSV: ``BASE_COLUMNS`` then every metric (sorted), one row per cell, empty where a cell has none."""
    metrics = sorted({k for r in rows for k in r} - set(BASE_COLUMNS))
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[*BASE_COLUMNS, *metrics], restval="")
        w.writeheader()
        w.writerows(rows)


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (None with one value) of the ``n`` seeds that have the metric, of
    ``total`` seeds (``failed`` of them failed)."""

    mean: float | None
    std: float | None
    n: int
    total: int
    failed: int = 0


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (``ddof=1``; None for fewer than two values)."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


@dataclass
class Aggregate:
    """The table's content: ``stats[(row, dataset, metric)]``, its rows, datasets and metrics, and a note."""

    rows: list[str]
    datasets: list[str]
    metrics: list[str]
    stats: dict[tuple[str, str, str], Stat]
    failures: list[str]
    note: str = ""


def _row_name(r: dict[str, Any]) -> str:
    return f"{r['method']} [{r['variant']}]" if r.get("variant") else str(r["method"])


def _metrics(rows: Sequence[dict[str, Any]]) -> tuple[list[str], str]:
    """The metrics every finished row shares, or (if none) every metric with a note saying so."""
    have = [{k for k, v in r.items() if k not in BASE_COLUMNS and v not in (None, "")} for r in rows
            if r["status"] != "failed"]  # fmt: skip
    if not have:
        return [], "no cell finished: nothing to compare"
    shared = set.intersection(*have)
    if shared:
        return sorted(shared), ""
    every = sorted(set.union(*have))
    return every, f"the cells share no metric: every metric is shown, '-' where a method has none ({', '.join(every)})"


def aggregate(rows: Sequence[dict[str, Any]]) -> Aggregate:
    """Group ``cell_rows`` by (method [variant], dataset) and reduce each metric over seeds to a ``Stat``."""
    names = list(dict.fromkeys(_row_name(r) for r in rows))
    datasets = list(dict.fromkeys(str(r["dataset"]) for r in rows))
    metrics, note = _metrics(rows)
    stats = {}
    for name, ds in ((n, d) for n in names for d in datasets):
        group = [r for r in rows if _row_name(r) == name and str(r["dataset"]) == ds]
        if not group:
            continue
        for m in metrics:
            values = [float(r[m]) for r in group if r["status"] != "failed" and r.get(m) not in (None, "")]
            failed = sum(r["status"] == "failed" for r in group)
            stats[(name, ds, m)] = Stat(*mean_std(values), len(values), len(group), failed)
    failures = [f"{_row_name(r)} {r['dataset']} seed{r['seed']}: {r['error'] or r['status']}" for r in rows
                if r["status"] == "failed"]  # fmt: skip
    return Aggregate(names, datasets, metrics, stats, failures, note)


def _best(agg: Aggregate, ds: str, metric: str) -> float | None:
    means = [s.mean for (_, d, m), s in agg.stats.items() if d == ds and m == metric and s.mean is not None]
    if len(means) < 2:
        return None
    return min(means) if lower_is_better(metric) else max(means)


def _text(s: Stat | None, pm: str) -> tuple[str, str]:
    """``(value, suffix)`` of a table cell: mean +/- std in % and the ``(k/n)`` of finished seeds."""
    if s is None or s.total == 0:
        return "-", ""
    if s.mean is None:
        return (f"failed ({s.failed}/{s.total})" if s.failed else "-"), ""
    value = f"{100 * s.mean:.2f}" + ("" if s.std is None else f"{pm}{100 * s.std:.2f}")
    return value, "" if s.failed == 0 else f" ({s.total - s.failed}/{s.total})"


def _columns(agg: Aggregate) -> list[tuple[str, str]]:
    return [(d, m) for d in agg.datasets for m in agg.metrics]


def _header(agg: Aggregate, col: tuple[str, str]) -> str:
    return col[1] if len(agg.datasets) == 1 else f"{col[0]} {col[1]}"


def grid_rows(agg: Aggregate, pm: str, bold) -> list[list[str]]:
    """The table body: one list per row (its name, then each column's text; ``bold`` wraps the best mean)."""
    body = []
    for name in agg.rows:
        line = [name]
        for col in _columns(agg):
            s = agg.stats.get((name, *col))
            value, suffix = _text(s, pm)
            best = _best(agg, *col)
            line.append((bold(value) if s and s.mean is not None and s.mean == best else value) + suffix)
        body.append(line)
    return body


def markdown(agg: Aggregate) -> str:
    """The Markdown table (best mean of each column in bold), the note and the failed cells."""
    if not agg.metrics:
        return _notes(agg, "", "- ")
    header = ["method", *(_header(agg, c) + (" ↓" if lower_is_better(c[1]) else "") for c in _columns(agg))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in grid_rows(agg, " ± ", lambda v: f"**{v}**")]
    return "\n".join(lines) + _notes(agg, "\n\n", "- ")


def _notes(agg: Aggregate, sep: str, bullet: str) -> str:
    notes = ([agg.note] if agg.note else []) + [f"failed: {f}" for f in agg.failures]
    return (sep + "\n".join(bullet + n for n in notes)) if notes else ""


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        s = s.replace(a, b)
    return s


def _tex_bold(value: str) -> str:
    mean, _, rest = value.partition(" ")
    return rf"\textbf{{{mean}}}" + (f" {rest}" if rest else "")


def latex(agg: Aggregate) -> str:
    """A booktabs ``tabular`` (mean $\\pm$ std in %, best mean in bold); the failed cells as comments below it."""
    if not agg.metrics:
        return "% " + agg.note + "\n"
    cols = _columns(agg)
    head = " & ".join(["Method", *(_tex(_header(agg, c)) + (r" $\downarrow$" if lower_is_better(c[1]) else "")
                                   for c in cols)])  # fmt: skip
    body = [" & ".join(_tex(x) if i == 0 else x.replace("failed", r"\textit{failed}") for i, x in enumerate(r))
            + r" \\" for r in grid_rows(agg, r" $\pm$ ", _tex_bold)]  # fmt: skip
    lines = [r"\begin{tabular}{l" + "c" * len(cols) + "}", r"\toprule", head + r" \\", r"\midrule", *body,
             r"\bottomrule", r"\end{tabular}"]  # fmt: skip
    return "\n".join(lines) + _notes(agg, "\n", "% ") + "\n"


def terminal(agg: Aggregate) -> str:
    """The table as aligned plain text (best mean marked ``*``), the note and the failed cells."""
    from ctta.runner.demo import _table

    if not agg.metrics:
        return _notes(agg, "", "")
    cols = _columns(agg)
    header = ["method", *(_header(agg, c) + (" (lower better)" if lower_is_better(c[1]) else "") for c in cols)]
    return _table(header, grid_rows(agg, " ± ", lambda v: f"*{v}")) + _notes(agg, "\n", "  ")


def write_outputs(out: Path, results: Sequence[Any]) -> tuple[dict[str, Path], str]:
    """Write ``cells.csv``, ``table.md``, ``table.tex`` and the plots into ``out``; return them and the terminal
    table."""
    from ctta.runner.compare_plots import write_plots

    out.mkdir(parents=True, exist_ok=True)
    rows = cell_rows(results)
    agg = aggregate(rows)
    files = {"csv": out / "cells.csv", "markdown": out / "table.md", "latex": out / "table.tex"}
    write_csv(files["csv"], rows)
    files["markdown"].write_text(markdown(agg) + "\n")
    files["latex"].write_text(latex(agg))
    files |= write_plots(out, results)
    return files, terminal(agg)
