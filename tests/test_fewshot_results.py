"""Few-shot runs write their results (issue 21 item 6): metrics.csv holds the training loss and top-1 of every epoch
and the base / new / HM accuracies, and accuracy.png plots them (before: a header-only CSV and an empty plot; base /
new / HM only in results.json and stdout)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ctta.runner.config import load_config
from ctta.runner.run import run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def coop_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("coop")
    cfg = load_config(ROOT / "configs/smoke/coop_digits.yaml",
                      ["device=cpu", f"log.out_dir={out}", "log.progress=false", "strategy.epochs=3"])  # fmt: skip
    run(cfg, verbose=False)
    with open(out / "metrics.csv", newline="") as fh:
        return out, list(csv.DictReader(fh))


def test_metrics_csv_has_every_epoch_and_base_new_hm(coop_run):
    out, rows = coop_run
    epochs = [r for r in rows if r["kind"] == "train_epoch"]
    assert [int(r["epoch"]) for r in epochs] == [1, 2, 3]
    assert all(float(r["loss"]) > 0 and 0 <= float(r["accuracy"]) <= 1 for r in epochs)
    summary = json.loads((out / "results.json").read_text())["summary"]
    final = {r["kind"]: float(r["accuracy"]) for r in rows if r["kind"] in ("base", "new", "hm")}
    assert final == pytest.approx({"base": summary["base_acc"], "new": summary["new_acc"], "hm": summary["hm"]})
    assert sum(r["kind"] == "base" for r in rows) == 1  # one row per evaluation point


def test_accuracy_png_plots_the_fewshot_rows(coop_run, monkeypatch, tmp_path):
    from ctta.runner import results

    out, rows = coop_run
    assert (out / "accuracy.png").stat().st_size > 10_000
    drawn = []
    monkeypatch.setattr(results, "plot_fewshot", lambda path, r, title="": drawn.append(len(r)))
    history = json.loads((out / "results.json").read_text())["history"]
    results.plot_accuracy(tmp_path / "a.png", history)
    assert drawn == [len(rows)]


def test_class_incremental_prompt_learner_rows(tmp_path):
    """Without base/new streams an epoch-trained run lists its test-stream top-1 after each experience."""
    cfg = load_config({
        "seed": 1, "device": "cpu", "log": {"out_dir": str(tmp_path), "plot": False, "progress": False},
        "scenario": {"name": "class_incremental", "dataset": "digits", "n_experiences": 2, "img_size": 32},
        "backbone": {"name": "clip", "model": "ctta-tiny-clip", "pretrained": ""},
        "strategy": {"name": "coop", "epochs": 1, "batch_size": 32, "lr": 0.01},
    })  # fmt: skip
    top1 = run(cfg, verbose=False)["summary"]["top1"]
    with open(tmp_path / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["kind"], r["epoch"]) for r in rows] == [("train_epoch", "1"), ("train_epoch", "2"), ("test", "1"),
                                                        ("test", "2")]  # fmt: skip
    assert float(rows[-1]["accuracy"]) == pytest.approx(top1)
