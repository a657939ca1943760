"""``ctta demo fewshot`` (ctta/runner/demo.py) in reduced form (4 shots, 2 epochs, 60 test images per stream):
zero-shot CLIP, CoOp, CoCoOp, MaPLe and PromptSRC on base-to-new digits over the shipped ``ctta-tiny-clip-digits``.

The bound is one the same demo with a random CLIP fails (``backbone.pretrained=``; measured: every HM <= 0.23,
the shipped CLIP's >= 0.86; the slow test checks it).
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from ctta.runner.cli import main
from ctta.runner.demo import FEWSHOT_METHODS, REDUCED

HM_BOUND = 0.6  # harmonic mean of base and new top-1 (5 classes each: chance 0.2)
QUIET = ["device=cpu", "log.progress=false"]


def _demo(out, extra=()) -> tuple[dict, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):  # through the CLI, the reduced settings given on the command line
        assert main(["demo", "fewshot", *QUIET, *REDUCED["fewshot"], *extra, f"log.out_dir={out}"]) == 0
    return json.loads((out / "demo_results.json").read_text()), buf.getvalue()


@pytest.fixture(scope="module")
def fewshot_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("fewshot_demo")
    res, stdout = _demo(out)
    return out, res, stdout


def test_every_method_beats_the_bound_with_the_shipped_clip(fewshot_demo):
    out, res, stdout = fewshot_demo
    assert [r["method"] for r in res["rows"]] == [label for label, _ in FEWSHOT_METHODS.values()]
    assert all(r["hm"] > HM_BOUND and r["base"] > HM_BOUND and r["new"] > HM_BOUND for r in res["rows"])
    assert all(len(r["epoch_loss"]) == 2 for r in res["rows"][1:])  # the learners trained (2 reduced epochs)
    assert "HM" in stdout and "PromptSRC" in stdout and (out / "demo_accuracy.png").stat().st_size > 10_000


def test_each_learner_writes_its_run(fewshot_demo):
    out, res, _ = fewshot_demo
    for key, row in zip(list(FEWSHOT_METHODS)[1:], res["rows"][1:]):
        summary = json.loads((out / key / "results.json").read_text())["summary"]
        assert summary["hm"] == pytest.approx(row["hm"]) and (out / key / "metrics.csv").is_file()


@pytest.mark.slow
def test_bound_fails_with_a_random_clip(tmp_path):
    res, _ = _demo(tmp_path, ["backbone.pretrained="])
    assert all(r["hm"] < HM_BOUND for r in res["rows"])
