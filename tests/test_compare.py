"""``ctta compare`` (issue 28): aggregation, tables, resuming a killed grid, failed cells, local workers and Ray."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ctta.runner.cli import make_parser
from ctta.runner.compare import Cell, CellResult, compare, expand, grid_from_args, make_grid
from ctta.runner.compare_plots import band, corruption_accuracies, write_plots
from ctta.runner.compare_tables import aggregate, latex, markdown, mean_std, terminal

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke"
VPT = str(SMOKE / "vpt_digits.yaml")
BROKEN = {"name": "broken", "config": VPT, "overrides": ["backbone.model=no_such_timm_model"]}  # fails when built

pytestmark = pytest.mark.xdist_group("compare")


def _row(method, seed, status="finished", dataset="digits", variant="", **metrics):
    return {"method": method, "dataset": dataset, "variant": variant, "seed": seed, "status": status,
            "action": "ran", "seconds": 1.0, "out_dir": "x", "error": "boom" if status == "failed" else "",
            **metrics}  # fmt: skip


FIXED = [
    _row("mvp", 1, A_last=0.50, F_last=0.30),
    _row("mvp", 2, A_last=0.60, F_last=0.10),
    _row("mvp", 3, A_last=0.70, F_last=0.20),
    _row("l2p", 1, A_last=0.20, F_last=0.05),
    _row("l2p", 2, A_last=0.40, F_last=0.15),
    _row("l2p", 3, status="failed"),
    _row("vpt", 1, status="failed"),
]


def test_aggregation_matches_hand_computed_mean_and_sample_std():
    agg = aggregate(FIXED)
    assert agg.rows == ["mvp", "l2p", "vpt"] and agg.metrics == ["A_last", "F_last"]
    mvp, l2p = agg.stats[("mvp", "digits", "A_last")], agg.stats[("l2p", "digits", "A_last")]
    assert mvp.mean == pytest.approx(0.6) and mvp.std == pytest.approx(0.1)  # sqrt((0.01 + 0 + 0.01) / 2)
    assert l2p.mean == pytest.approx(0.3) and l2p.std == pytest.approx(math.sqrt(0.02))  # the failed seed is out
    assert (l2p.n, l2p.total, l2p.failed) == (2, 3, 1)
    assert agg.stats[("mvp", "digits", "F_last")].std == pytest.approx(0.1)
    vpt = agg.stats[("vpt", "digits", "A_last")]
    assert vpt.mean is None and vpt.failed == 1
    assert mean_std([0.25]) == (0.25, None) and mean_std([]) == (None, None)


def test_markdown_and_latex_tables_on_a_fixed_input():
    agg = aggregate(FIXED)
    assert markdown(agg) == (
        "| method | A_last | F_last ↓ |\n"
        "|:---|---:|---:|\n"
        "| mvp | **60.00 ± 10.00** | 20.00 ± 10.00 |\n"
        "| l2p | 30.00 ± 14.14 (2/3) | **10.00 ± 7.07** (2/3) |\n"
        "| vpt | failed (1/1) | failed (1/1) |\n"
        "\n"
        "- failed: l2p digits seed3: boom\n"
        "- failed: vpt digits seed1: boom"
    )
    assert latex(agg) == (
        "\\begin{tabular}{lcc}\n\\toprule\n"
        "Method & A\\_last & F\\_last $\\downarrow$ \\\\\n\\midrule\n"
        "mvp & \\textbf{60.00} $\\pm$ 10.00 & 20.00 $\\pm$ 10.00 \\\\\n"
        "l2p & 30.00 $\\pm$ 14.14 (2/3) & \\textbf{10.00} $\\pm$ 7.07 (2/3) \\\\\n"
        "vpt & \\textit{failed} (1/1) & \\textit{failed} (1/1) \\\\\n"
        "\\bottomrule\n\\end{tabular}\n"
        "% failed: l2p digits seed3: boom\n"
        "% failed: vpt digits seed1: boom\n"
    )
    assert "*60.00 ± 10.00" in terminal(agg) and "vpt digits seed1: boom" in terminal(agg)


def test_cells_sharing_no_metric_say_so():
    rows = [_row("vpt", 1, A_last=0.5), _row("tpt", 1, top1=0.25), _row("tpt", 2, top1=0.75)]
    agg = aggregate(rows)
    assert agg.metrics == ["A_last", "top1"] and "share no metric" in agg.note
    table = markdown(agg)
    assert "| vpt | 50.00 | - |" in table and "| tpt | - | 50.00 ± 35.36 |" in table
    assert "share no metric" in table and "share no metric" in latex(agg) and "share no metric" in terminal(agg)


def test_command_line_grid_sweeps_and_folders(tmp_path):
    args = make_parser().parse_args(["compare", VPT, "strategy.lr=0.02", "--seeds", "1,2", "--sweep",
                                     "strategy.n_prompts=1,2", "--out", str(tmp_path)])  # fmt: skip
    grid = grid_from_args(args)
    assert grid.seeds == (1, 2) and grid.overrides == ("strategy.lr=0.02",)
    cells = expand(grid, tmp_path)
    assert len(cells) == 4 and not any(c.error for c in cells)
    assert {Path(c.out_dir).relative_to(tmp_path).as_posix() for c in cells} == {
        f"vpt_digits/digits/strategy.n_prompts={n}/seed{s}" for n in (1, 2) for s in (1, 2)}
    assert cells[0].overrides[-2:] == ("strategy.n_prompts=1", "seed=1")


def test_plot_helpers():
    import numpy as np

    seeds = [(np.array([0.0, 10, 20]), np.array([0.0, 10, 20])), (np.array([0.0, 15]), np.array([0, 30.0]))]
    x, mean, std = band(seeds)
    assert x.tolist() == [0, 10, 15] and mean.tolist() == [0, 15, 22.5]
    assert std[1] == pytest.approx(np.std([10, 20], ddof=1))
    res = {"config": {"scenario": {"corruptions": ["gaussian_noise", "defocus_blur"], "severities": [5]}},
           "last_metrics": {"Top1_Acc_Exp/eval_phase/test_stream/Exp000": 0.5,
                            "Top1_Acc_Exp/eval_phase/test_stream/Exp001": 0.25}}  # fmt: skip
    assert corruption_accuracies(res) == {"gaussian_noise": 0.5, "defocus_blur": 0.25}


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    """VPT smoke over seeds 1 and 2 and a method whose backbone cannot be built, in 2 local worker processes."""
    out = tmp_path_factory.mktemp("compare")
    grid = make_grid([VPT, BROKEN], seeds=[1, 2], overrides=["strategy.eval_every=600"])
    return grid, out, compare(grid, out, jobs=2, threads=1, verbose=False)


def test_grid_writes_every_cell_csv_tables_and_plot(grid_run):
    _, out, res = grid_run
    status = {(r.cell.method, r.cell.seed): r.status for r in res.results}
    assert status == {("vpt_digits", 1): "finished", ("vpt_digits", 2): "finished", ("broken", 1): "failed",
                      ("broken", 2): "failed"}  # fmt: skip
    assert all(r.action == "ran" for r in res.results)
    broken = [r for r in res.results if r.status == "failed"]
    assert all("no_such_timm_model" in r.error for r in broken)
    assert all((Path(r.cell.out_dir) / "error.txt").is_file() for r in broken)
    lines = (out / "cells.csv").read_text().splitlines()
    assert len(lines) == 5 and lines[0].startswith("method,dataset,variant,seed,status")
    vpt = [json.loads((Path(r.cell.out_dir) / "results.json").read_text())["summary"]["A_last"]
           for r in res.results if r.status == "finished"]  # fmt: skip
    mean, std = mean_std(vpt)
    md = (out / "table.md").read_text()
    vpt_line = next(line for line in md.splitlines() if line.startswith("| vpt_digits |")).replace("**", "")
    assert vpt_line.split(" | ")[3] == f"{100 * mean:.2f} ± {100 * std:.2f}"  # method, A_auc, A_avg, A_last
    assert "| broken | failed (2/2) |" in md and "failed: broken digits seed1" in md
    assert (out / "table.tex").is_file() and (out / "compare_stream.png").is_file()


def test_killed_grid_resumes_only_the_missing_cells(grid_run):
    grid, out, first = grid_run
    cells = {(r.cell.method, r.cell.seed): Path(r.cell.out_dir) for r in first.results}
    killed = cells[("vpt_digits", 2)]
    (killed / "results.json").unlink()  # a run killed midway: its marker, no results
    (killed / "running.json").write_text(json.dumps({"run_id": "x", "pid": 1, "host": "h", "started": 0}))
    kept = (cells[("vpt_digits", 1)] / "results.json").stat().st_mtime_ns
    again = compare(grid, out, jobs=1, threads=1, verbose=False)
    actions = {(r.cell.method, r.cell.seed): (r.action, r.status) for r in again.results}
    assert actions[("vpt_digits", 1)] == ("skipped", "finished")
    assert actions[("vpt_digits", 2)] == ("ran", "finished") and (killed / "results.json").is_file()
    assert actions[("broken", 1)] == ("ran", "failed")  # failed cells are retried
    assert (cells[("vpt_digits", 1)] / "results.json").stat().st_mtime_ns == kept
    changed = make_grid([VPT], seeds=[1], overrides=["strategy.eval_every=600", "strategy.lr=0.02"])
    rerun = compare(changed, out, jobs=1, threads=1, verbose=False).results[0]  # another fingerprint: runs again
    assert rerun.action == "ran" and rerun.status == "finished"


def test_ray_backend_on_a_local_instance(tmp_path):
    pytest.importorskip("ray")
    grid = make_grid([VPT], seeds=[3], overrides=["strategy.eval_every=600"])
    res = compare(grid, tmp_path, jobs=1, threads=1, backend="ray", verbose=False).results
    assert [(r.status, r.action) for r in res] == [("finished", "ran")]
    assert (Path(res[0].cell.out_dir) / "results.json").is_file() and (tmp_path / "table.md").is_file()


def test_a_cell_whose_config_does_not_load_fails_without_running(tmp_path):
    grid = make_grid([{"name": "typo", "config": VPT, "overrides": ["strategy.no_such_key=1"]}])
    res = compare(grid, tmp_path, verbose=False)
    [r] = res.results
    assert (r.status, r.action) == ("failed", "skipped") and "no_such_key" in r.error
    assert not Path(r.cell.out_dir).exists()  # nothing ran
    assert "no cell finished" in res.table and "typo digits seed1" in res.table  # the file's dataset
    assert "failed" in (tmp_path / "cells.csv").read_text().splitlines()[1]


def _fake(tmp_path, method, seed, results):
    folder = tmp_path / method / f"seed{seed}"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    return CellResult(Cell(method, "c.yaml", "digits", "", seed, (), str(folder)), "finished", "ran")


def test_each_protocol_gets_its_plot(tmp_path):
    stream = {"history": [{"kind": "periodic", "samples": 10, "accuracy": 0.5},
                          {"kind": "task_end", "samples": 20, "accuracy": 0.6}]}  # fmt: skip
    b2n = {"summary": {"base_acc": 0.8, "new_acc": 0.6, "hm": 0.69}, "history": [{"kind": "train_epoch"}]}
    tta = {"config": {"scenario": {"corruptions": ["fog"], "severities": [5]}},
           "last_metrics": {"Top1_Acc_Exp/eval_phase/test_stream/Exp000": 0.4}, "history": [{"kind": "sample"}]}
    made = write_plots(tmp_path, [_fake(tmp_path, "vpt", 1, stream), _fake(tmp_path, "vpt", 2, stream)])
    assert set(made) == {"stream plot"} and (tmp_path / "compare_stream.png").is_file()
    made = write_plots(tmp_path, [_fake(tmp_path, "coop", 1, b2n), _fake(tmp_path, "tpt", 1, tta)])
    assert set(made) == {"base/new plot", "corruption plot"}
    assert all(p.stat().st_size > 0 for p in made.values())
