"""Resume is safe and output folders never mix runs.

Resume only a checkpoint whose fingerprint matches (else stop naming the differing keys); order checkpoints by
recorded progress; never delete another run's checkpoints; keep unreadable ones; never overwrite a finished run
unless ``overwrite=true``; results appear only when the run ends; no stray temporary files; normal permissions.
"""

from __future__ import annotations

import json

import pytest
import torch

from ctta.runner.checkpoint import load_latest, run_fingerprint, save_checkpoint, scan_checkpoints
from ctta.runner.cli import main
from ctta.runner.config import load_config
from ctta.runner.run import prepare
from tests.helpers import SMOKE, copy_run

VPT = str(SMOKE / "vpt_digits.yaml")
# The shared VPT run's settings (conftest's vpt_run): same fingerprint, so a resume of its copy is accepted.
QUICK = ["log.progress=false", "log.plot=false", "device=cpu", "log.checkpoint_every=256"]
shared_run = pytest.mark.xdist_group("vpt_run")  # reads the session's shared VPT run: same xdist worker


def _run(out, *extra):
    return main(["run", VPT, *QUICK, f"log.out_dir={out}", *extra])


def _files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


@shared_run
def test_resume_into_another_configs_folder_refuses_and_names_the_keys(vpt_run, tmp_path, capsys):
    assert vpt_run.ctx.cfg.strategy.params.lr == 0.01 and vpt_run.ctx.cfg.seed == 1  # what the message names
    out = copy_run(vpt_run, tmp_path / "run")
    before, ckpts = _files(out), _files(out / "checkpoints")
    capsys.readouterr()
    assert _run(out, "strategy.lr=0.05", "seed=2", "resume=true") == 2
    err = capsys.readouterr().err
    assert "strategy.lr" in err and "seed" in err and "0.01" in err and "0.05" in err
    assert "log.out_dir" in err  # the way out
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert _files(out) == before and _files(out / "checkpoints") == ckpts  # nothing overwritten, nothing deleted


def test_resume_of_the_same_config_ignores_output_only_keys(tmp_path):
    a = load_config(VPT, [*QUICK, f"log.out_dir={tmp_path}/a"])
    b = load_config(VPT, [*QUICK, f"log.out_dir={tmp_path}/b", "log.plot=true", "resume=true", "overwrite=true"])
    assert run_fingerprint(a) == run_fingerprint(b)
    assert run_fingerprint(a) != run_fingerprint(load_config(VPT, [*QUICK, "strategy.lr=0.5"]))


def test_checkpoint_order_comes_from_recorded_progress_not_names(tmp_path):
    fa, fb = {"seed": 1}, {"seed": 2}
    save_checkpoint(tmp_path, {"s": 100}, step=100, run_id="aaaa", fingerprint=fa)
    newest_a = save_checkpoint(tmp_path, {"s": 200}, step=200, run_id="aaaa", fingerprint=fa)
    small = save_checkpoint(tmp_path, {"s": 10}, step=10, run_id="cccc", fingerprint=fa)
    for p in (small, small.with_suffix(".json")):  # a name that sorts last, with little recorded progress
        p.rename(tmp_path / p.name.replace("ckpt-000000000010", "ckpt-999999999999"))
    save_checkpoint(tmp_path, {"s": 50}, step=50, run_id="bbbb", fingerprint=fb)
    assert load_latest(tmp_path)[0] == {"s": 200}
    assert scan_checkpoints(tmp_path, fa).state == {"s": 200} and scan_checkpoints(tmp_path, fa).path == newest_a
    scan = scan_checkpoints(tmp_path, fb)
    assert scan.state == {"s": 50} and len(scan.mismatched) == 3
    assert scan_checkpoints(tmp_path, {"seed": 3}).state is None


def test_a_run_prunes_only_its_own_checkpoints(tmp_path):
    for step in (1, 2):
        save_checkpoint(tmp_path, {"s": step}, step=step, keep=2, run_id="other")
    for step in (3, 4, 5):
        save_checkpoint(tmp_path, {"s": step}, step=step, keep=2, run_id="mine")
    names = sorted(p.name for p in tmp_path.glob("ckpt-*.pt"))
    assert names == [f"ckpt-{s:012d}-{r}.pt" for s, r in ((1, "other"), (2, "other"), (4, "mine"), (5, "mine"))]


@shared_run
def test_every_checkpoint_unreadable_says_so_and_keeps_them(vpt_run, tmp_path, capsys):
    out = copy_run(vpt_run, tmp_path / "run")
    ck = out / "checkpoints"
    for p in ck.glob("ckpt-*.pt"):
        p.write_bytes(p.read_bytes()[:100])  # truncated
    kept = _files(ck)
    assert kept
    capsys.readouterr()
    assert _run(out, "resume=true") == 2
    err = capsys.readouterr().err
    assert "unreadable" in err and "kept" in err and all(n in err for n in kept if n.endswith(".pt"))
    assert _files(ck) == kept


@shared_run
def test_finished_run_is_not_overwritten_unless_asked(vpt_run, tmp_path, capsys):
    out = copy_run(vpt_run, tmp_path / "run")
    before = _files(out)
    capsys.readouterr()
    assert _run(out, "strategy.lr=0.05") == 2
    err = capsys.readouterr().err
    assert "finished run" in err and "overwrite=true" in err and "Traceback" not in err
    assert _files(out) == before  # config.yaml and results untouched
    assert _run(out, "strategy.lr=0.05", "overwrite=true") == 0
    assert json.loads((out / "results.json").read_text())["config"]["strategy"]["lr"] == 0.05


@shared_run
def test_results_appear_only_when_the_run_ends_and_stray_temporaries_go(vpt_run):
    """The shared run started in a folder holding two stale temporary files (conftest's vpt_run)."""
    assert "config.yaml" in vpt_run.after_prepare and "running.json" in vpt_run.after_prepare
    assert "results.json" not in vpt_run.after_prepare
    assert not [p for p in vpt_run.after_prepare if p.endswith(".tmp")], vpt_run.after_prepare
    out = vpt_run.out
    assert (out / "results.json").is_file() and not (out / "running.json").exists()
    assert not list(out.rglob("*.tmp"))


def test_unfinished_run_needs_resume_or_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    prepare(load_config(VPT, [*QUICK, f"log.out_dir={out}"]))  # never executed: an interrupted run
    capsys.readouterr()
    assert _run(out) == 2
    err = capsys.readouterr().err
    assert "unfinished run" in err and "resume=true" in err and "overwrite=true" in err


@shared_run
def test_outputs_get_the_users_normal_permissions(vpt_run):
    """The shared run ran under umask 022."""
    out = vpt_run.out
    for p in [out / "results.json", out / "config.yaml", *(out / "checkpoints").iterdir()]:
        assert p.stat().st_mode & 0o777 == 0o644, p.name


@shared_run
def test_resumed_run_continues_the_same_run_and_prunes_its_checkpoints(vpt_run, tmp_path):
    out = copy_run(vpt_run, tmp_path / "run")
    first = sorted(p.name for p in (out / "checkpoints").glob("ckpt-*.pt"))
    assert _run(out, "resume=true") == 0  # resumes the final checkpoint: nothing left to train
    after = sorted(p.name for p in (out / "checkpoints").glob("ckpt-*.pt"))
    assert len(after) <= 2 and {n.rsplit("-", 1)[1] for n in after} == {n.rsplit("-", 1)[1] for n in first}
    assert torch.load(out / "checkpoints" / after[-1], weights_only=False)["seen_samples"] > 0
