"""Divergence is a result, not a secret: a non-finite loss stops the run naming the step; results.json is JSON."""

from __future__ import annotations

import json
import math

import pytest

from ctta.runner.cli import main
from ctta.runner.results import write_results
from tests.helpers import ROOT

VPT = str(ROOT / "configs" / "smoke" / "vpt_digits.yaml")


def _strict_json(text: str):
    def refuse(const):
        raise ValueError(f"not JSON: {const}")

    return json.loads(text, parse_constant=refuse)


def test_results_json_is_valid_json_with_null_for_non_finite(tmp_path):
    import numpy as np
    import torch

    results = {"summary": {"a": math.nan, "b": math.inf, "c": 0.5}, "last": {"t": torch.tensor(-math.inf)},
               "arr": np.array([1.0, np.nan]), "n": np.float32("nan")}  # fmt: skip
    write_results(tmp_path, results, [{"kind": "periodic", "samples": 1, "accuracy": math.nan}], plot=False)
    saved = _strict_json((tmp_path / "results.json").read_text())
    assert saved["summary"] == {"a": None, "b": None, "c": 0.5}
    assert saved["last"]["t"] is None and saved["arr"] == [1.0, None] and saved["n"] is None
    assert saved["history"][0]["accuracy"] is None


def test_non_finite_loss_stops_the_run_and_is_recorded(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", VPT, "strategy.lr=1e30", f"log.out_dir={out}", "log.progress=false", "log.plot=false", "device=cpu"]
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2
    assert "diverged" in err and "non-finite loss" in err and "experience 0" in err and "iteration" in err
    assert "Traceback" not in err
    saved = _strict_json((out / "results.json").read_text())
    assert saved["status"] == "diverged"
    assert saved["divergence"]["experience"] == 0 and saved["divergence"]["iteration"] >= 1
    assert "lr" in saved["divergence"]["message"] or "learning rate" in saved["divergence"]["message"]


@pytest.mark.xdist_group("vpt_run")
def test_finished_run_has_status_finished(vpt_run):
    """The session's shared VPT run (conftest's ``vpt_run``)."""
    assert _strict_json((vpt_run.out / "results.json").read_text())["status"] == "finished"


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_divergence_guard_raises_on_the_first_non_finite_loss(value):
    import torch

    from ctta.runner.guards import DivergenceError, DivergenceGuard

    class Clock:
        train_exp_counter, train_exp_iterations, train_iterations = 1, 4, 9

    class Strategy:
        loss = torch.tensor(value)
        clock = Clock()
        seen_samples = 128

    with pytest.raises(DivergenceError, match=r"non-finite loss \((nan|inf)\) at experience 1, iteration 5"):
        DivergenceGuard().after_backward(Strategy())
    Strategy.loss = torch.tensor(1.0)
    DivergenceGuard().after_backward(Strategy())
