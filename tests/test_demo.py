"""``ctta demo`` / ``ctta demo tta`` (ctta/runner/demo.py) in reduced form: learning well above chance.

The bounds are ones that the same demos with random backbone weights fail (``backbone.pretrained=false`` / ``""``;
measured: MVP A_last about 0.1 and zero-shot about 0.1; see the slow tests).
"""

from __future__ import annotations

import json

import pytest

from ctta.runner.demo import demo_main

CL_BOUND = 0.35  # MVP A_last on the reduced digits stream (10 classes: chance 0.1)
PROBE_BOUND = 0.85
TTA_BOUND = 0.4  # mean top-1 over the reduced corruption stream (chance 0.1)
QUIET = ["device=cpu", "log.progress=false"]


def _cl(tmp_path, extra=()):
    assert demo_main("cl", [*QUIET, *extra], str(tmp_path), reduced=True) == 0
    return json.loads((tmp_path / "demo_results.json").read_text())


def _tta(tmp_path, extra=()):
    assert demo_main("tta", [*QUIET, *extra], str(tmp_path), reduced=True) == 0
    return json.loads((tmp_path / "demo_results.json").read_text())


@pytest.mark.xdist_group("cl_demo")
def test_cl_demo_learns_with_the_shipped_vit(cl_demo):
    """The session's reduced CL demo (conftest's ``cl_demo``: ``ctta demo`` with the reduced settings, shared with
    tests/test_cli.py)."""
    folder, table = cl_demo
    res = json.loads((folder / "demo_results.json").read_text())
    assert res["mvp"]["A_last"] > CL_BOUND and res["linear_probe"] > PROBE_BOUND
    assert res["mvp"]["A_last"] > res["naive"]["A_last"]
    assert (folder / "demo_accuracy.png").is_file() and (folder / "results.json").is_file()
    assert "joint linear probe" in table and "naive online fine-tuning" in table


def test_tta_demo_learns_with_the_shipped_clip(tmp_path, capsys):
    res = _tta(tmp_path)
    assert len(res["rows"]) == 2 and res["zero_shot_mean"] > TTA_BOUND and res["tpt_mean"] > TTA_BOUND
    assert "zero-shot" in capsys.readouterr().out and (tmp_path / "demo_accuracy.png").is_file()


def test_unknown_demo_kind_raises():
    with pytest.raises(ValueError, match="cl"):
        demo_main("nope")


@pytest.mark.slow
def test_cl_bound_fails_with_a_random_backbone(tmp_path):
    res = _cl(tmp_path, ["backbone.pretrained=false"])
    assert res["mvp"]["A_last"] < CL_BOUND


@pytest.mark.slow
def test_tta_bound_fails_with_a_random_clip(tmp_path):
    res = _tta(tmp_path, ["backbone.pretrained="])
    assert res["zero_shot_mean"] < TTA_BOUND and res["tpt_mean"] < TTA_BOUND
