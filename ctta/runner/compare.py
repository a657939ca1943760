"""``ctta compare``: methods x datasets x seeds x ``key=values`` sweeps, each cell an ordinary ``ctta run``.

Every cell of the grid is one run (``ctta.runner.run.run``) into its own folder
``<out>/<method>/<dataset>/[<sweep values>/]seed<seed>`` (the layout of ``compose.default_out_dir`` under ``<out>``).
A cell whose folder already holds a finished (or diverged) run with the same fingerprint (``run_fingerprint``: the
resolved config minus output-only keys, the device type and the package versions; plus the data identity recorded
in ``compare_cell.json``) is skipped, so a killed comparison resumes where it stopped; an unfinished cell of a
resumable (online continual-learning) strategy whose checkpoints match continues with ``resume=true``; any other
cell runs with ``overwrite=true``, with the reason printed when its folder held a run
(``ctta.runner.compare_cells``). A cell that fails (its config does not load, its run raises) is recorded with
status ``failed`` and its error (``error.txt`` in its folder holds the traceback); it stays in the CSV and in the
table.

Cells run in the current process (``jobs=1``), in ``jobs`` local worker processes (``jobs>1``; each worker's
torch and OpenMP use ``threads`` threads, by default the CPUs divided by ``jobs``), or as Ray tasks
(``backend="ray"``, the optional ``ctta[ray]`` extra; a local Ray instance, or ``ray_address`` of a cluster).
The aggregate outputs (CSV, Markdown and LaTeX tables, plots) are written by ``ctta.runner.compare_tables`` and
``ctta.runner.compare_plots`` into ``<out>``.

A grid file (YAML) lists::

    methods:                    # a config path, or {name, config, overrides}
      - configs/smoke/vpt_digits.yaml
      - {name: l2p_short, config: configs/smoke/l2p_digits.yaml, overrides: [strategy.online_iters=1]}
    datasets: [digits]          # scenario.dataset of each cell (left out: each config's own)
    seeds: [1, 2, 3]
    overrides: [strategy.eval_batch_size=128]   # applied to every cell
    sweep: {strategy.lr: [0.01, 0.001]}         # every combination becomes a variant of each method
"""

from __future__ import annotations

import itertools
import os
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctta.runner.compare_cells import DataIdentity, Plan, plan, record, run_overrides


@dataclass(frozen=True)
class Method:
    """One row of the comparison: a config file with the overrides that make the method (``label`` names it)."""

    label: str
    config: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Grid:
    """Methods x datasets x sweep variants x seeds; ``overrides`` apply to every cell.

    Attributes:
        methods: the rows.
        datasets: ``scenario.dataset`` of each cell (``None``: the config's own dataset).
        seeds: the seeds of each (method, dataset, variant).
        overrides: ``key=value`` overrides of every cell (after each method's own).
        sweep: ``(key, values)`` pairs; every combination of values is a variant of each method.
    """

    methods: tuple[Method, ...]
    datasets: tuple[str | None, ...] = (None,)
    seeds: tuple[int, ...] = (1,)
    overrides: tuple[str, ...] = ()
    sweep: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def variants(self) -> list[tuple[str, ...]]:
        """The sweep's ``key=value`` combinations (one empty variant without a sweep)."""
        keys, values = [k for k, _ in self.sweep], [v for _, v in self.sweep]
        return [tuple(f"{k}={v}" for k, v in zip(keys, vals)) for vals in itertools.product(*values)]


@dataclass(frozen=True)
class Cell:
    """One run of the grid: its config, every override (without ``log.out_dir``) and its folder."""

    method: str
    config: str
    dataset: str
    variant: str
    seed: int
    overrides: tuple[str, ...]
    out_dir: str
    error: str = ""  # the config does not load: the cell fails without running


@dataclass
class CellResult:
    """What a cell gave: ``status`` (finished, diverged, failed), ``action`` (ran, resumed, skipped), its summary.

    ``note``: why a cell whose folder held something ran again, or from where it resumed.
    """

    cell: Cell
    status: str
    action: str
    summary: dict[str, float] = field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0
    note: str = ""


def method(spec: str | Mapping[str, Any]) -> Method:
    """A ``Method`` from a config path (labelled by its file stem) or a mapping ``{config, name?, overrides?}``."""
    from ctta.runner.config import ConfigError

    if isinstance(spec, str):
        return Method(Path(spec).stem, spec)
    if not isinstance(spec, Mapping) or "config" not in spec or set(spec) - {"name", "config", "overrides"}:
        raise ConfigError(f"grid: a method is a config path or {{name, config, overrides}}, got {spec!r}")
    return Method(str(spec.get("name") or Path(spec["config"]).stem), str(spec["config"]),
                  tuple(str(o) for o in spec.get("overrides") or ()))  # fmt: skip


def read_grid(path: str | Path) -> dict[str, Any]:
    """The keys of a grid YAML file (``methods``, ``datasets``, ``seeds``, ``overrides``, ``sweep``)."""
    import yaml

    from ctta.runner.config import ConfigError

    data = yaml.safe_load(Path(path).read_text()) or {}
    unknown = set(data) - {"methods", "datasets", "seeds", "overrides", "sweep"} if isinstance(data, dict) else {0}
    if unknown:
        raise ConfigError(f"{path}: a grid maps methods, datasets, seeds, overrides and sweep; unknown: {unknown}")
    return data


def make_grid(methods: Iterable, datasets: Iterable | None = None, seeds: Iterable[int] | None = None,
              overrides: Iterable[str] = (), sweep: Mapping[str, Iterable] | None = None) -> Grid:  # fmt: skip
    """A ``Grid`` from plain values (config paths or method mappings, dataset names, seeds, overrides, sweep)."""
    from ctta.runner.config import ConfigError

    ms = tuple(method(m) for m in methods)
    if not ms:
        raise ConfigError("ctta compare needs at least one method config")
    labels = [m.label for m in ms]
    if len(set(labels)) < len(labels):
        raise ConfigError(f"two methods share a name ({labels}); name them: {{name: ..., config: ...}}")
    sw = tuple((str(k), tuple(_yaml_str(v) for v in vs)) for k, vs in (sweep or {}).items())
    return Grid(ms, tuple(datasets or (None,)), tuple(int(s) for s in seeds or (1,)), tuple(overrides), sw)


def _yaml_str(v: Any) -> str:
    """A sweep value as an override's right-hand side (lists and mappings in YAML flow style)."""
    import yaml

    return v if isinstance(v, str) else yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("\n...")


def expand(grid: Grid, out: str | Path) -> list[Cell]:
    """Every cell of ``grid`` with its folder under ``out`` (absolute paths; configs are loaded to validate them)."""
    cells = []
    for m, ds, var, seed in itertools.product(grid.methods, grid.datasets, grid.variants(), grid.seeds):
        ovr = (*m.overrides, *grid.overrides, *([f"scenario.dataset={ds}"] if ds else []), *var, f"seed={seed}")
        cells.append(_cell(m, ds, var, seed, ovr, Path(out).resolve()))
    return cells


def _cell(m: Method, ds: str | None, var: tuple[str, ...], seed: int, ovr: tuple[str, ...], out: Path) -> Cell:
    from ctta.runner.compose import default_out_dir
    from ctta.runner.config import load_config

    variant = ",".join(var)
    try:
        cfg = load_config(m.config, ovr)
        folder = Path(default_out_dir(cfg, m.label)).relative_to("runs")  # <label>/<dataset>/seed<seed>
        ds, error = folder.parts[1], ""
    except (ValueError, FileNotFoundError) as e:  # ConfigError among them: the cell fails, the grid goes on
        ds, error = ds or _file_dataset(m.config), f"{type(e).__name__}: {e}"
        folder = Path(m.label, ds, f"seed{seed}")
    if variant:
        folder = folder.parent / variant.replace("/", "_") / folder.name
    return Cell(m.label, str(Path(m.config).resolve()), ds, variant, seed, ovr, str(out / folder), error)


def _file_dataset(path: str) -> str:
    """The ``scenario.dataset`` a config file names (read without validation), ``-`` if none can be read."""
    from ctta.runner.config import read_yaml

    try:
        scenario = read_yaml(path).get("scenario")
    except (ValueError, OSError):
        return "-"
    return str(scenario.get("dataset") or "-") if isinstance(scenario, Mapping) else "-"


def run_cell(config: str, overrides: Sequence[str], out_dir: str, threads: int | None = None,
             resume: bool = False, data: Mapping[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Run one cell (in this process) as ``ctta run config overrides log.out_dir=out_dir overwrite=true``.

    With ``resume`` it first tries ``resume=true`` (the runner restores the matching checkpoint with the most
    progress); when the runner refuses (no checkpoint matches the full fingerprint, data included; none readable)
    the cell runs afresh with ``overwrite=true``. ``data``: the cell's data identity, recorded in its folder once
    the run has started (earlier results removed), so that a results.json is never paired with a newer identity.

    Returns:
        ``{"status", "summary", "error", "seconds", "resumed_from", "note"}``; an exception becomes
        ``status="failed"`` (traceback in ``out_dir/error.txt``), a diverged run ``status="diverged"`` with its
        results.json summary; ``resumed_from`` is the stream samples the resumed checkpoint had done (0: not resumed).
    """
    import json

    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(threads or before))
    t0 = time.perf_counter()
    err = Path(out_dir) / "error.txt"
    err.unlink(missing_ok=True)
    info = {"resumed_from": 0, "note": ""}
    try:
        res = _run_cell(config, overrides, out_dir, resume, data, info)
        return {"status": "finished", "summary": dict(res["summary"]), "error": "",
                "seconds": time.perf_counter() - t0, **info}  # fmt: skip
    except Exception as e:  # noqa: BLE001 - every failure is a result of the comparison
        diverged = type(e).__name__ == "DivergenceError"
        summary = json.loads((Path(out_dir) / "results.json").read_text())["summary"] if diverged else {}
        if not diverged:
            err.parent.mkdir(parents=True, exist_ok=True)
            err.write_text(traceback.format_exc())
        error = f"{type(e).__name__}: {' '.join(str(e).split())}"
        return {"status": "diverged" if diverged else "failed", "summary": summary, "error": error,
                "seconds": time.perf_counter() - t0, **info}  # fmt: skip
    finally:
        torch.set_num_threads(before)


def _run_cell(config: str, overrides: Sequence[str], out_dir: str, resume: bool, data: Mapping[str, str] | None,
              info: dict) -> dict[str, Any]:  # fmt: skip
    """``run_cell``'s run: resumed if asked and the runner accepts, else afresh; ``info`` says which."""
    from ctta.runner.config import load_config
    from ctta.runner.outdir import RunError
    from ctta.runner.run import execute, prepare

    ctx = None
    if resume:
        try:
            ctx = prepare(load_config(config, run_overrides(overrides, out_dir, resume=True)))
            info["resumed_from"] = int(ctx.strategy.seen_samples)
        except RunError as e:  # refused before anything ran (the folder is as it was): start afresh
            info["note"] = f"not resumed: {' '.join(str(e).split())[:300]}"
    ctx = ctx or prepare(load_config(config, run_overrides(overrides, out_dir)))
    if data is not None:
        record(out_dir, data)
    return execute(ctx, verbose=False)


def _init_worker(threads: int) -> None:
    """A local worker's thread budget: OpenMP / MKL before torch loads, then torch's intra-op threads."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _dispatch(cells: list[Cell], jobs: int, threads: int, backend: str, ray_address: str | None,
              plans: Mapping[Cell, Plan] | None = None):  # fmt: skip
    """Yield ``(cell, result dict)`` as cells finish, on the chosen backend (``plans``: resume, data identity)."""
    plans = plans or {}
    args = [(c.config, c.overrides, c.out_dir, _cell_options(plans.get(c))) for c in cells]
    if not cells:
        return
    if backend == "ray":
        yield from _ray_results(cells, args, jobs, threads, ray_address)
        return
    if jobs <= 1:
        for c, a in zip(cells, args):
            yield c, run_cell(*a[:3], threads=threads, **a[3])
        return
    import multiprocessing as mp

    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=(threads,)) as pool:  # fmt: skip
        futures = {pool.submit(run_cell, *a[:3], **a[3]): c for c, a in zip(cells, args)}
        try:
            for f in as_completed(futures):
                yield futures[f], f.result()
        except BaseException:  # interrupted: start no further cell (the unfinished ones rerun next time)
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _cell_options(p: Plan | None) -> dict[str, Any]:
    """``run_cell``'s keyword arguments from a cell's plan."""
    return {} if p is None else {"resume": p.action == "resume", "data": p.data}


def _ray_results(cells: list[Cell], args: list[tuple], jobs: int, threads: int, address: str | None):
    """Yield ``(cell, result dict)`` from Ray tasks (each ``run_cell`` with ``threads`` CPUs).

    Without ``address`` (and no Ray already initialised) a local instance with ``jobs * threads`` CPUs is started
    and stopped; with ``address`` the cluster's resources decide how many cells run at once.
    """
    try:
        import ray
    except ImportError:
        raise ImportError("backend 'ray' needs Ray: pip install 'ctta[ray]'") from None
    started = not ray.is_initialized()
    if started:
        local = {"num_cpus": max(1, jobs) * threads} if address is None else {}
        ray.init(address=address, include_dashboard=False, log_to_driver=False, **local)
    env = {"env_vars": {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}}
    task = ray.remote(num_cpus=threads, runtime_env=env)(run_cell)
    refs = {task.remote(*a[:3], threads=threads, **a[3]): c for c, a in zip(cells, args)}
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield refs[done[0]], ray.get(done[0])
    finally:
        if started:
            ray.shutdown()


@dataclass
class Comparison:
    """A finished comparison: every cell's result and the files written under ``out``."""

    out: Path
    results: list[CellResult]
    files: dict[str, Path]
    table: str  # the terminal table


def compare(grid: Grid, out: str | Path = "runs/compare", jobs: int = 1, threads: int | None = None,
            backend: str = "local", ray_address: str | None = None, verbose: bool = True) -> Comparison:  # fmt: skip
    """Run every cell of ``grid`` not already finished in ``out``, then write the CSV, tables and plots.

    Args:
        grid: the comparison (``make_grid``).
        out: the comparison's folder; cell ``<method>/<dataset>/[<variant>/]seed<seed>`` runs under it.
        jobs: cells run at once (local worker processes; ``1``: in this process, one after the other).
        threads: torch / OpenMP threads per cell (default: the CPUs divided by ``jobs``, at least 1).
        backend: ``"local"`` or ``"ray"`` (the ``ctta[ray]`` extra).
        ray_address: a Ray cluster's address (default: a local instance).
        verbose: print one line per cell and the table.

    Returns:
        The ``Comparison`` (``results`` in grid order).
    """
    from ctta.runner.compare_tables import write_outputs

    if backend not in ("local", "ray"):
        from ctta.runner.config import ConfigError

        raise ConfigError(f"backend must be 'local' or 'ray', got {backend!r}")
    out = Path(out).resolve()
    jobs = max(1, int(jobs))
    threads = int(threads or max(1, (os.cpu_count() or 1) // jobs))
    cells = expand(grid, out)
    say = print if verbose else (lambda *a, **k: None)
    t0, data = time.perf_counter(), DataIdentity()
    plans = {c: plan(c, data) for c in cells if not c.error}
    results = {c: _known(c, plans.get(c)) for c in cells}
    todo = [c for c, r in results.items() if r is None]
    resume = frozenset(c for c in todo if plans[c].action == "resume")
    bad = sum(bool(c.error) for c in cells)
    say(f"ctta compare: {len(cells)} cells, {len(cells) - len(todo) - bad} finished earlier, {bad} with config errors; "
        f"running {len(todo)}, {len(resume)} of them resumed ({jobs} at once, {threads} thread(s) each, {backend}); "
        f"data identity of {len(data.cache)} folder(s) in {time.perf_counter() - t0:.1f}s")  # fmt: skip
    for c in cells:
        if c.error or (c in todo and plans[c].why):
            say(f"  {_describe(results[c])}" if c.error else f"  {_name(c)}: runs again ({plans[c].why})")
    for i, (cell, res) in enumerate(_dispatch(todo, jobs, threads, backend, ray_address, plans), 1):
        results[cell] = _ran(cell, res, plans[cell])
        say(f"[{i}/{len(todo)}] {_describe(results[cell])}")
    done = [results[c] for c in cells]
    files, table = write_outputs(out, done)
    say(table)
    say("wrote " + ", ".join(str(p) for p in files.values()))
    return Comparison(out, done, files, table)


def _known(cell: Cell, p: Plan | None) -> CellResult | None:
    """The cell's result without running it: failed (its config does not load) or finished earlier; else None."""
    if cell.error:
        return CellResult(cell, "failed", "skipped", error=cell.error)
    return CellResult(cell, p.status, "skipped", p.summary) if p is not None and p.action == "skip" else None


def _ran(cell: Cell, res: dict[str, Any], p: Plan) -> CellResult:
    """A ``CellResult`` from ``run_cell``'s dict: ``resumed`` when it continued from a checkpoint."""
    resumed = int(res.get("resumed_from") or 0)
    note = f"resumed at {resumed} stream samples" if resumed else res.get("note") or p.why
    return CellResult(cell, res["status"], "resumed" if resumed else "ran", res["summary"], res["error"],
                      res["seconds"], note)  # fmt: skip


def _name(c: Cell) -> str:
    return " ".join(x for x in (c.method, c.dataset, c.variant, f"seed{c.seed}") if x)


def _describe(r: CellResult) -> str:
    shown = r.action == "resumed" or r.note.startswith("not resumed")  # the other notes were said before the run
    name, note = _name(r.cell), f"; {r.note}" if shown else ""
    if r.status == "failed":
        return f"{name}: failed ({r.error})"
    metrics = ", ".join(f"{k}={100 * v:.2f}" for k, v in r.summary.items() if v is not None)
    return f"{name}: {r.status} {metrics} ({r.seconds:.1f}s{note})"


def _split_values(raw: str) -> list[str]:
    """``a,b,[c,d]`` -> ``["a", "b", "[c,d]"]`` (commas inside brackets or braces stay)."""
    parts, depth, cur = [], 0, ""
    for ch in raw:
        depth += (ch in "[{") - (ch in "]}")
        if ch == "," and depth == 0:
            parts, cur = [*parts, cur], ""
        else:
            cur += ch
    return [p.strip() for p in [*parts, cur] if p.strip()]


def _csv(raw: str) -> list[str]:
    return [x.strip() for x in raw.split(",") if x.strip()]


def grid_from_args(args) -> Grid:
    """The grid of ``ctta compare``'s arguments: the grid file's keys, then the command line's additions."""
    from ctta.runner.config import ConfigError

    data = read_grid(args.grid) if args.grid else {}
    words = list(args.items)
    configs = [w for w in words if "=" not in w]
    sweep = dict(data.get("sweep") or {})
    for s in args.sweep or ():
        if "=" not in s:
            raise ConfigError(f"--sweep {s!r} is not of the form key=value1,value2")
        key, raw = s.split("=", 1)
        sweep[key] = _split_values(raw)
    return make_grid([*(data.get("methods") or []), *configs], args.datasets or data.get("datasets"),
                     args.seeds or data.get("seeds"), [*(data.get("overrides") or []),
                                                       *(w for w in words if "=" in w)], sweep)  # fmt: skip


def cmd_compare(args) -> int:
    """``ctta compare``: run the grid, print the table; exit code 1 when a cell failed."""
    res = compare(grid_from_args(args), args.out, args.jobs, args.threads, args.backend, args.ray_address)
    return 1 if any(r.status == "failed" for r in res.results) else 0


def add_compare_parser(sub) -> None:
    """Add the ``compare`` sub-command to ``ctta``'s sub-parsers."""
    c = sub.add_parser(
        "compare",
        help="run methods x datasets x seeds (x key=values sweeps), each cell a `ctta run`, and tabulate and plot "
        "mean +/- std over seeds",
        description=__doc__.split("\n\n")[0] + " Example: ctta compare configs/smoke/vpt_digits.yaml "
        "configs/smoke/l2p_digits.yaml strategy.online_iters=1 --seeds 1,2,3 --jobs 2 --out runs/cmp (options "
        "before or after the configs and overrides, not between them)",
    )
    c.add_argument("items", nargs="*", metavar="CONFIG|key=value", help="method configs and overrides of every cell")
    c.add_argument("--grid", help="a grid YAML file (methods, datasets, seeds, overrides, sweep)")
    c.add_argument("--datasets", type=_csv, help="scenario.dataset of each cell, comma-separated (default: each "
                   "config's own)")  # fmt: skip
    c.add_argument("--seeds", type=lambda s: [int(x) for x in _csv(s)], help="seeds, comma-separated (default: 1)")
    c.add_argument("--sweep", action="append", metavar="key=v1,v2", help="a key's values, every combination a variant")
    c.add_argument("--out", default="runs/compare", help="the comparison's folder (default: runs/compare)")
    c.add_argument("--jobs", type=int, default=1, help="cells at once (local worker processes; default 1)")
    c.add_argument("--threads", type=int, help="torch/OpenMP threads per cell (default: CPUs / jobs)")
    c.add_argument("--backend", choices=("local", "ray"), default="local", help="ray: the ctta[ray] extra")
    c.add_argument("--ray-address", help="a Ray cluster's address (default: a local Ray instance)")
    c.set_defaults(func=cmd_compare)
