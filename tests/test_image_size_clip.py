"""CLIP and ViT image sides are checked before anything loads; open_clip's own error log does not repeat ctta's."""

from __future__ import annotations

import logging
import os

import pytest

from ctta.backbones.clip import _open_clip_errors_held, clip_image_size, create_clip
from ctta.runner.cli import main
from ctta.runner.config import load_config
from ctta.runner.run import check_image_size
from tests.helpers import ROOT

SMOKE = ROOT / "configs" / "smoke"
QUICK = ["log.progress=false", "log.plot=false", "device=cpu"]


def _one_line_exit_2(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ctta: "), err
    return err


@pytest.mark.parametrize(
    ("config", "overrides", "needles"),
    [  # the shipped tiny CLIP (32 px) on a 224-px scenario: was "size of tensor a (785) must match ..."
        ("tpt_digits", ["backbone.model=ctta-tiny-clip-digits", "backbone.pretrained=ctta", "scenario.resolution=224"],
         ["scenario.resolution=224", "32-px", "scenario.resolution=32", "backbone.model"]),
        ("coop_digits", ["backbone.model=ViT-B/16", "backbone.pretrained=", "scenario.img_size=32"],
         ["scenario.img_size=32", "224-px", "scenario.img_size=224", "backbone.model"]),
        ("vpt_digits", ["backbone.model=ctta-tiny-vit", "backbone.pretrained=false", "backbone.img_size=null",
                        "backbone.patch_size=null", "backbone.depth=null", "backbone.embed_dim=null",
                        "backbone.num_heads=null", "scenario.img_size=64"],  # was an AssertionError traceback
         ["scenario.img_size=64", "32-px", "scenario.img_size=32"]),
    ],
)  # fmt: skip
def test_a_backbone_of_another_image_size_is_one_line_and_no_folder(tmp_path, capsys, config, overrides, needles):
    out = tmp_path / "out"
    err = _one_line_exit_2(capsys, ["run", str(SMOKE / f"{config}.yaml"), *QUICK, f"log.out_dir={out}", *overrides])
    assert all(n in err for n in needles), err
    assert not out.exists()


def test_clip_image_size_reads_configs_without_weights():
    assert clip_image_size("ctta-tiny-clip") == 32
    assert clip_image_size("ctta-tiny-clip-digits") == 32
    assert clip_image_size("ViT-B/16") == clip_image_size("ViT-B-16") == 224
    assert clip_image_size("ViT-L-14-336") == 336
    assert clip_image_size("no-such-clip") is None


@pytest.mark.parametrize(
    ("config", "overrides"),
    [
        ("tpt_digits", ["backbone.model=ctta-tiny-clip-digits", "backbone.pretrained=ctta"]),
        ("coop_digits", ["backbone.model=ViT-B/16", "backbone.pretrained=", "scenario.img_size=224"]),
        ("coop_digits", ["backbone.model=no-such-clip"]),  # unknown size: the builder's own error, not this check
        ("vpt_digits", []),
    ],
)
def test_matching_or_unknown_sizes_pass(config, overrides):
    check_image_size(load_config(SMOKE / f"{config}.yaml", overrides))


def _open_clip_record(level: int) -> logging.LogRecord:
    import open_clip

    path = os.path.join(os.path.dirname(open_clip.__file__), "factory.py")
    return logging.LogRecord("root", level, path, 1, f"open_clip {logging.getLevelName(level)}", None, None)


def test_open_clip_errors_are_held_during_a_load_and_warnings_pass(caplog):
    with pytest.raises(RuntimeError), _open_clip_errors_held():
        logging.getLogger().handle(_open_clip_record(logging.WARNING))
        logging.getLogger().handle(_open_clip_record(logging.ERROR))
        raise RuntimeError("load failed")  # ctta's own message supersedes the held error
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    caplog.clear()
    with _open_clip_errors_held():
        logging.getLogger().handle(_open_clip_record(logging.ERROR))
        assert not caplog.records
    assert [r.levelno for r in caplog.records] == [logging.ERROR]  # the load succeeded: re-logged
    caplog.clear()
    logging.getLogger().handle(_open_clip_record(logging.ERROR))  # outside a load: untouched
    assert [r.levelno for r in caplog.records] == [logging.ERROR]


def test_unavailable_clip_weights_print_only_ctta_s_line(tmp_path, capsys, caplog, monkeypatch):
    import open_clip.factory

    def offline(*args, **kwargs):
        raise RuntimeError("Failed to download file (open_clip_pytorch_model.bin): offline")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    with pytest.raises(RuntimeError, match="backbone.pretrained=/path/to/file"):
        create_clip("RN50", "openai", cache_dir=str(tmp_path / "cache"))
    assert not caplog.records, [r.getMessage() for r in caplog.records]  # open_clip logged ERROR:root:... here
    out = tmp_path / "out"
    argv = ["run", str(SMOKE / "coop_digits.yaml"), *QUICK, f"log.out_dir={out}", "backbone.model=RN50",
            "backbone.pretrained=openai", "scenario.img_size=224", f"backbone.cache_dir={tmp_path}/cache"]  # fmt: skip
    assert "could not fetch the CLIP weights" in _one_line_exit_2(capsys, argv)
    assert not caplog.records and not out.exists()


def test_a_missing_local_weights_file_is_only_ctta_s_message(tmp_path, capsys, caplog):
    missing = tmp_path / "missing.safetensors"
    argv = ["run", str(SMOKE / "coop_digits.yaml"), *QUICK, f"log.out_dir={tmp_path / 'out'}",
            "backbone.model=RN50", f"backbone.pretrained={missing}", "scenario.img_size=224"]  # fmt: skip
    assert str(missing) in _one_line_exit_2(capsys, argv)
    assert not caplog.records
