"""CLI: demo end to end (outputs written), list, config errors reported without a traceback."""

from __future__ import annotations

import json

import pytest

from ctta.runner.cli import main
from tests.helpers import ROOT


@pytest.mark.xdist_group("cl_demo")
def test_demo_writes_outputs(cl_demo):
    """The session's reduced ``ctta demo`` (conftest's ``cl_demo``, also read by tests/test_demo.py)."""
    folder, out = cl_demo
    assert "A_last" in out and "MVP" in out and "linear probe" in out and "demo_results.json" in out
    res = json.loads((folder / "results.json").read_text())  # MVP's own run, as `ctta run` writes it
    assert 0.0 <= res["summary"]["A_last"] <= 1.0
    assert res["history"] and (folder / "accuracy.png").stat().st_size > 1000
    assert (folder / "metrics.csv").read_text().startswith("kind,samples,accuracy")
    demo = json.loads((folder / "demo_results.json").read_text())
    assert demo["kind"] == "cl" and demo["mvp"]["A_last"] == pytest.approx(res["summary"]["A_last"])
    assert (folder / "demo_accuracy.png").stat().st_size > 1000


def test_demo_kind_must_be_cl_or_tta(capsys):
    assert main(["demo", "nope"]) == 2
    assert "'cl' (default), 'tta' or 'fewshot'" in capsys.readouterr().err


def test_list_shows_components(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "strategies:" in out and "mvp" in out and "si_blurry" in out and "vit" in out


def test_config_error_is_reported(tmp_path, capsys):
    rc = main(["demo", "strategy.nope=1"])
    assert rc == 2
    assert "unknown key(s) ['nope']" in capsys.readouterr().err


def test_generate_caches_views_once(tmp_path, capsys):
    cfg = str(ROOT / "configs" / "smoke" / "difftpt_digits.yaml")
    args = [
        "generate",
        cfg,
        f"log.out_dir={tmp_path}",
        "log.progress=false",
        f"strategy.diffusion.cache_dir={tmp_path / 'views'}",
    ]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert "generated 0 images" in capsys.readouterr().out and "generated 0 images" not in first
    assert (
        main(
            [
                "generate",
                str(ROOT / "configs" / "smoke" / "vpt_digits.yaml"),
                f"log.out_dir={tmp_path}/v",
                "log.progress=false",
            ]
        )
        == 2
    )


def test_missing_dataset_is_reported_without_traceback(tmp_path, capsys):
    rc = main(
        [
            "run",
            str(ROOT / "configs" / "mvp_siblurry.yaml"),
            "scenario.dataset=cifar100",
            f"scenario.root={tmp_path}",
            f"log.out_dir={tmp_path}/out",
            "backbone.pretrained=false",
        ]
    )
    assert rc == 2  # a user error: exit code 2 like every other (issue 13), no traceback
    err = capsys.readouterr().err
    assert "CIFAR-100 not found" in err and "cifar-100-python.tar.gz" in err
