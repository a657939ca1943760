"""Fail early and in one message: bad inputs reach the CLI as one line and exit code 2 before anything loads."""

from __future__ import annotations

import pytest

from ctta.runner.cli import main
from ctta.runner.config import ConfigError, load_config
from tests.helpers import ROOT, copy_run, shipped_config_cases

VPT = str(ROOT / "configs" / "smoke" / "vpt_digits.yaml")
QUICK = ["log.progress=false", "log.plot=false", "device=cpu"]


def _fails_cleanly(capsys, argv, *needles):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)
    return err


def test_yaml_syntax_error_is_one_message(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 1\nstrategy: {name: vpt, lr: [0.1\n")
    _fails_cleanly(capsys, ["run", str(bad)], "bad.yaml", "not valid YAML", "line")


@pytest.mark.parametrize(("override", "needle"), [("precision=fp64", "precision"), ("device=gpu", "device")])
def test_bad_precision_or_device_is_a_config_error(tmp_path, capsys, override, needle):
    out = tmp_path / "out"
    _fails_cleanly(capsys, ["run", VPT, *QUICK, f"log.out_dir={out}", override], needle, "auto")
    assert not out.exists()  # nothing written


def test_unavailable_cuda_device_fails_before_loading(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    _fails_cleanly(capsys, ["run", VPT, "log.progress=false", f"log.out_dir={out}", "device=cuda:1"], "cuda", "cpu")
    assert not out.exists()


def test_output_folder_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("keep me")
    _fails_cleanly(capsys, ["run", VPT, *QUICK, f"log.out_dir={f}"], "is a file")
    _fails_cleanly(capsys, ["run", VPT, *QUICK, f"log.out_dir={f}/sub"], "which is a file")
    assert f.read_text() == "keep me"


def test_read_only_output_folder(tmp_path, capsys, monkeypatch):
    import os

    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(ro) else real(p, mode))
    _fails_cleanly(capsys, ["run", VPT, *QUICK, f"log.out_dir={ro}/run"], "not writable", str(ro))
    assert list(ro.iterdir()) == []


def test_debug_shows_the_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        main(["--debug", "run", str(bad)])


def test_config_class_checks_are_config_errors(tmp_path, capsys):
    tpt = str(ROOT / "configs" / "smoke" / "tpt_digits.yaml")
    out = tmp_path / "out"
    _fails_cleanly(capsys, ["run", tpt, *QUICK, f"log.out_dir={out}", "strategy.tta_steps=-1"], "strategy", "tta_steps")
    assert not out.exists()


def test_a_strategy_refusing_its_inputs_is_one_message(tmp_path, capsys, monkeypatch):
    from ctta.runner import run as run_mod

    def refuse(*a, **k):
        raise ValueError("MVP needs a benchmark with\n  class names")

    monkeypatch.setattr(run_mod, "build_strategy", refuse)
    err = _fails_cleanly(capsys, ["run", VPT, *QUICK, f"log.out_dir={tmp_path}/o"], "class names", "--debug")
    assert "ValueError" in err


def test_image_size_the_backbone_cannot_take_fails_before_loading(tmp_path, capsys):
    tpt = str(ROOT / "configs" / "smoke" / "tpt_digits.yaml")
    out = tmp_path / "out"
    argv = ["run", tpt, *QUICK, f"log.out_dir={out}", "scenario.resolution=224"]  # the tiny CLIP takes 32 px
    _fails_cleanly(capsys, argv, "scenario.resolution=224", "32", "scenario.resolution=32")
    argv = ["run", VPT, *QUICK, f"log.out_dir={out}", "backbone.img_size=64"]
    _fails_cleanly(capsys, argv, "scenario.img_size=32", "64")
    assert not out.exists()


def test_every_shipped_config_passes_the_image_size_check():
    from ctta.runner.run import check_image_size

    for path, dataset in shipped_config_cases():  # a method+protocol file: each of its datasets
        check_image_size(load_config(path, [f"scenario.dataset={dataset}"] if dataset else []))


@pytest.mark.xdist_group("vpt_run")
def test_a_run_failing_before_training_leaves_the_folder_as_found(vpt_run, tmp_path, capsys):
    out = tmp_path / "out"
    _fails_cleanly(capsys, ["run", VPT, *QUICK, f"log.out_dir={out}", "scenario.n_experiences=20"], "n_experiences")
    assert not out.exists()  # no config.yaml, no running marker: the next run is not refused as "unfinished"
    copy_run(vpt_run, out)  # a finished run of VPT (the session's shared one)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    argv = ["run", VPT, *QUICK, f"log.out_dir={out}", "overwrite=true", "scenario.n_experiences=20"]
    _fails_cleanly(capsys, argv, "n_experiences")
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after["config.yaml"] == before["config.yaml"] and "running.json" not in after


def test_weights_unavailable_is_one_message(tmp_path, capsys, monkeypatch):
    from types import SimpleNamespace

    from ctta.runner import run as run_mod

    def offline(cfg):
        raise RuntimeError("could not fetch the weights 'x' (offline?); pass backbone.pretrained=/path/to/file")

    monkeypatch.setattr(run_mod, "BACKBONES", SimpleNamespace(get=lambda name: SimpleNamespace(builder=offline)))
    _fails_cleanly(capsys, ["run", VPT, *QUICK, f"log.out_dir={tmp_path}/o"], "backbone.pretrained=/path")
    assert not (tmp_path / "o").exists()


def test_resume_of_a_test_time_method_is_refused_before_loading(tmp_path, capsys):
    tpt = str(ROOT / "configs" / "smoke" / "tpt_digits.yaml")
    _fails_cleanly(capsys, ["run", tpt, *QUICK, f"log.out_dir={tmp_path}/o", "resume=true"], "online continual")
    assert not (tmp_path / "o").exists()
