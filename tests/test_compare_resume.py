"""``ctta compare`` resumes killed online cells from their checkpoints and reruns cells whose data changed.

A cell killed mid-stream continues with ``resume=true`` and ends with the uninterrupted cell's summary; checkpoints
that do not match make it run afresh; a changed dataset folder reruns a finished cell (an unchanged one is
skipped); a finished cell without a recorded data identity reruns and says why; the folder digest is the same in
another process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ctta.runner.run as run_module
from ctta.runner import compare_cells
from ctta.runner.checkpoint import run_fingerprint, save_checkpoint
from ctta.runner.compare import compare, expand, make_grid, run_cell
from ctta.runner.compare_cells import CELL_FILE, DataIdentity, folder_digest, plan
from ctta.runner.config import load_config
from tests.helpers import SMOKE, Killer, save_rgb

VPT = str(SMOKE / "vpt_digits.yaml")
ONLINE = ["device=cpu", "log.plot=false", "strategy.batch_size=32", "strategy.eval_every=600",
          "strategy.online_iters=1", "log.checkpoint_every=96"]  # fmt: skip

pytestmark = pytest.mark.xdist_group("compare")


def _killing(monkeypatch, after_batches: int) -> None:
    """Every run built from now on raises ``KeyboardInterrupt`` after ``after_batches`` iterations (a kill)."""
    build = run_module.build_strategy

    def with_killer(cfg, bench, backbone, evaluator=None, plugins=()):
        return build(cfg, bench, backbone, evaluator, [*plugins, Killer(after_batches)])

    monkeypatch.setattr(run_module, "build_strategy", with_killer)


def test_killed_online_cell_resumes_to_the_uninterrupted_summary(tmp_path, monkeypatch):
    grid = make_grid([VPT], seeds=[1], overrides=ONLINE)
    [full] = compare(grid, tmp_path / "full", threads=1, verbose=False).results
    assert (full.status, full.action) == ("finished", "ran")
    _killing(monkeypatch, after_batches=20)
    with pytest.raises(KeyboardInterrupt):
        compare(grid, tmp_path / "part", threads=1, verbose=False)
    monkeypatch.undo()
    [cell] = expand(grid, tmp_path / "part")
    folder = Path(cell.out_dir)
    assert not (folder / "results.json").exists() and list((folder / "checkpoints").glob("ckpt-*.pt"))
    assert plan(cell, DataIdentity()).action == "resume"
    [again] = compare(grid, tmp_path / "part", threads=1, verbose=False).results
    assert (again.status, again.action) == ("finished", "resumed") and again.note.startswith("resumed at ")
    assert 0 < int(again.note.split()[2]) <= 20 * 32  # from the newest checkpoint before the kill
    assert again.summary.keys() == full.summary.keys()
    for k, v in full.summary.items():
        assert again.summary[k] == pytest.approx(v, abs=1e-6), k
    assert ",resumed," in (tmp_path / "part" / "cells.csv").read_text().splitlines()[1]
    changed = make_grid([VPT], seeds=[1], overrides=[*ONLINE, "strategy.lr=0.02"])
    [cell] = expand(changed, tmp_path / "part")
    (folder / "results.json").unlink()  # unfinished again, but its checkpoints are of another learning rate
    assert plan(cell, DataIdentity()).why == "unfinished, not resumed: no checkpoint matches the config"


def test_resume_refused_by_the_runner_runs_afresh(tmp_path):
    grid = make_grid([VPT], seeds=[1], overrides=[*ONLINE, "log.checkpoint_every=0"])
    [cell] = expand(grid, tmp_path)
    other = run_fingerprint(load_config(cell.config, cell.overrides)) | {"seed": 99}  # another seed's checkpoint
    save_checkpoint(Path(cell.out_dir) / "checkpoints", {"x": 1}, step=32, fingerprint=other)
    res = run_cell(cell.config, cell.overrides, cell.out_dir, threads=1, resume=True)
    assert res["status"] == "finished" and res["resumed_from"] == 0
    assert res["note"].startswith("not resumed: resume=true: no checkpoint") and "seed: 99 there, 1 now" in res["note"]
    assert (Path(cell.out_dir) / "results.json").is_file()


def test_a_test_time_cell_with_checkpoints_is_not_resumed(tmp_path):
    [cell] = expand(make_grid([str(SMOKE / "tpt_digits.yaml")]), tmp_path)
    save_checkpoint(Path(cell.out_dir) / "checkpoints", {"x": 1}, step=32)
    p = plan(cell, DataIdentity())
    assert p.action == "run" and p.why == "unfinished (its strategy does not resume)"


def _images(root: Path, n: int = 3) -> None:
    """A ``folder`` dataset: ``root/{train,test}/{cat,dog}/<k>.png``."""
    for split in ("train", "test"):
        for c, cls in enumerate(("cat", "dog")):
            for k in range(n):
                save_rgb(root / split / cls / f"{k}.png", (120 * c, 40 * k, 50), (8, 8))


def test_changed_data_folder_reruns_unchanged_skips_unrecorded_says_why(tmp_path, capsys):
    data = tmp_path / "data"
    _images(data)
    ovr = ["device=cpu", "log.plot=false", "scenario.dataset=folder", f"scenario.root={data}", "strategy.batch_size=2"]
    grid = make_grid([VPT], seeds=[1], overrides=ovr)
    [first] = compare(grid, tmp_path / "cmp", threads=1, verbose=False).results
    assert (first.status, first.action) == ("finished", "ran")
    recorded = json.loads((Path(first.cell.out_dir) / CELL_FILE).read_text())["data"]
    assert list(recorded) == ["data.folder"] and recorded["data.folder"].startswith(f"{data.resolve()} sha256:")
    [same] = compare(grid, tmp_path / "cmp", threads=1, verbose=False).results
    assert (same.action, same.summary) == ("skipped", first.summary)
    save_rgb(data / "train" / "dog" / "3.png", (200, 10, 10), (8, 8))  # the user adds an image
    [changed] = compare(grid, tmp_path / "cmp", threads=1).results
    assert (changed.status, changed.action, changed.note) == ("finished", "ran", "data changed: data.folder")
    assert "runs again (data changed: data.folder)" in capsys.readouterr().out
    (Path(first.cell.out_dir) / CELL_FILE).unlink()  # a cell finished before data identities were recorded
    [old] = compare(grid, tmp_path / "cmp", threads=1).results
    assert (old.action, old.note) == ("ran", "data identity not recorded")
    assert "vpt_digits folder seed1: runs again (data identity not recorded)" in capsys.readouterr().out


def test_a_cell_killed_before_its_turn_keeps_its_old_data_identity(tmp_path, monkeypatch):
    data = tmp_path / "data"
    _images(data)
    ovr = ["device=cpu", "log.plot=false", "scenario.dataset=folder", f"scenario.root={data}", "strategy.batch_size=2"]
    grid = make_grid([VPT], seeds=[1, 2], overrides=ovr)
    compare(grid, tmp_path / "cmp", threads=1, verbose=False)
    save_rgb(data / "test" / "cat" / "3.png", (9, 9, 9), (8, 8))
    _killing(monkeypatch, after_batches=1)
    with pytest.raises(KeyboardInterrupt):  # killed inside seed 1: seed 2 (finished on the old data) never started
        compare(grid, tmp_path / "cmp", threads=1, verbose=False)
    monkeypatch.undo()
    first, second = (plan(c, DataIdentity()) for c in expand(grid, tmp_path / "cmp"))
    assert (first.action, first.why) == ("run", "unfinished")
    assert (second.action, second.why) == ("run", "data changed: data.folder")  # not skipped with a newer identity


def test_data_identity_of_bundled_and_uncatalogued_names(tmp_path):
    ident = DataIdentity()
    assert ident.of(load_config(VPT, [])) == {"data.digits": "bundled"}
    assert ident.dataset("no_such_set", str(tmp_path)) == "uncatalogued (name only)"
    assert ident.dataset("cifar100", str(tmp_path)).endswith("cifar-100-python missing")
    assert not ident.cache or all(v.endswith("missing") for v in ident.cache.values())


def test_folder_digest_sees_listing_changes_and_is_stable_across_processes(tmp_path, monkeypatch):
    _images(tmp_path / "d")
    (tmp_path / "d" / "split.json").write_text("{}")
    before = folder_digest(tmp_path / "d")
    code = f"from ctta.runner.compare_cells import folder_digest as f; print(f({str(tmp_path / 'd')!r}))"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert other.stdout.strip() == before
    img, split = tmp_path / "d" / "train" / "cat" / "0.png", tmp_path / "d" / "split.json"
    st = img.stat()
    img.write_bytes(img.read_bytes()[:-1] + b"\0")  # the same name and size, rewritten in place
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert folder_digest(tmp_path / "d") != before  # a small tree: every file's size and mtime
    monkeypatch.setattr(compare_cells, "STAT_ALL_LIMIT", 0)  # an ImageNet-size tree: images by name only
    large = folder_digest(tmp_path / "d")
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    assert folder_digest(tmp_path / "d") == large  # an image rewritten in place is what it cannot see
    split.write_text('{"train": []}')  # split lists, annotations, pickles: always size and mtime
    assert folder_digest(tmp_path / "d") != large
    (tmp_path / "d" / "train" / "cat" / "9.png").write_bytes(b"")
    assert folder_digest(tmp_path / "d") not in (large, before)
