"""CLI: demo end to end (outputs written), list, config errors reported without a traceback."""

from __future__ import annotations

import json

import pytest

from ctta.runner.cli import main


def test_demo_writes_outputs(tmp_path, capsys):
    rc = main(["demo", f"log.out_dir={tmp_path}", "log.progress=false", "scenario.n_tasks=3"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "A_last" in out and "MVP" in out and "linear probe" in out and "demo_results.json" in out
    res = json.loads((tmp_path / "results.json").read_text())  # MVP's own run, as `ctta run` writes it
    assert 0.0 <= res["summary"]["A_last"] <= 1.0
    assert res["history"] and (tmp_path / "accuracy.png").stat().st_size > 1000
    assert (tmp_path / "metrics.csv").read_text().startswith("kind,samples,accuracy")
    demo = json.loads((tmp_path / "demo_results.json").read_text())
    assert demo["kind"] == "cl" and demo["mvp"]["A_last"] == pytest.approx(res["summary"]["A_last"])
    assert (tmp_path / "demo_accuracy.png").stat().st_size > 1000


def test_demo_kind_must_be_cl_or_tta(capsys):
    assert main(["demo", "nope"]) == 2
    assert "'cl' (default) or 'tta'" in capsys.readouterr().err


def test_list_shows_components(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "strategies:" in out and "mvp" in out and "si_blurry" in out and "vit" in out


def test_config_error_is_reported(tmp_path, capsys):
    rc = main(["demo", "strategy.nope=1"])
    assert rc == 2
    assert "unknown key(s) ['nope']" in capsys.readouterr().err


def test_generate_caches_views_once(tmp_path, capsys):
    from tests.conftest import ROOT

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
    from tests.conftest import ROOT

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
