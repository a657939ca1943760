"""Issue 21 items 5 and 9: a bad image names itself (exit 2, or skipped with a count when asked), a one-class
``folder`` dataset is refused, a batch larger than every experience warns in one line; the CLI prints ctta's
warnings as one ``ctta: warning:`` line (the corrupted-checkpoint warning showed a line of ctta's source)."""

from __future__ import annotations

import warnings

import pytest
from PIL import Image

from ctta.data import catalogue
from ctta.data.folder import UnreadableImageError, load_rgb
from ctta.runner.cli import _ctta_dirs, main, one_line_warnings
from tests.helpers import ROOT

SMOKE = str(ROOT / "configs" / "smoke" / "vpt_digits.yaml")


def _folder(root, classes=("cat", "dog"), n=(6, 3), corrupt=True):
    """``<root>/{train,test}/<class>/k.jpg``; with ``corrupt`` the first training image of ``classes[0]`` is garbage."""
    for split, count in zip(("train", "test"), n):
        for c, cls in enumerate(classes):
            for k in range(count):
                path = root / split / cls / f"{k}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (12 + k, 10), (120 * c, 20 * k, 60)).save(path)
    bad = root / "train" / classes[0] / "0.jpg"
    if corrupt:
        bad.write_bytes(b"this is not a jpeg" * 10)
    return bad


def test_corrupt_image_named_at_load(tmp_path):
    bad = _folder(tmp_path)
    with pytest.raises(UnreadableImageError, match="cannot read image .*0.jpg: not an image PIL can identify; fix"):
        catalogue.load("folder", "cl", tmp_path, img_size=8)
    with pytest.raises(UnreadableImageError, match=f"cannot read image {bad}"):  # every loader reading through it
        load_rgb(bad)


def test_corrupt_image_skipped_with_a_count_when_asked(tmp_path):
    _folder(tmp_path)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\) of 12 \(first: .*0.jpg"):
        train, test = catalogue.load("folder", "cl", tmp_path, img_size=8, skip_bad_images=True)
    assert len(train) == 11 and len(train.targets) == 11 and len(test) == 6
    assert train[0][0].shape == (3, 8, 8)


def _run(tmp_path, capsys, *overrides):
    args = ["run", SMOKE, "scenario.dataset=folder", f"scenario.root={tmp_path}", "scenario.n_experiences=1",
            f"log.out_dir={tmp_path / 'out'}", "log.progress=false", "log.plot=false", *overrides]  # fmt: skip
    rc = main(args)
    return rc, capsys.readouterr().err


def test_ctta_run_names_the_corrupt_file_and_exits_2(tmp_path, capsys):
    bad = _folder(tmp_path)
    rc, err = _run(tmp_path, capsys)
    assert rc == 2
    assert err.strip().splitlines() == [
        f"ctta: UnreadableImageError: cannot read image {bad}: not an image PIL can identify; fix or remove it (a "
        "folder dataset skips unreadable images with scenario.skip_bad_images=true) (ctta --debug run ... shows the "
        "traceback)"
    ]


def test_ctta_run_skips_when_asked_and_warns_about_the_batch_in_one_line_each(tmp_path, capsys):
    _folder(tmp_path)
    rc, err = _run(tmp_path, capsys, "scenario.skip_bad_images=true")
    assert rc == 0, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert any(line.startswith("ctta: warning: folder dataset ") and "skipped 1 unreadable image(s) of 12" in line
               for line in lines), err  # fmt: skip
    assert (
        "ctta: warning: strategy batch size 64 is larger than every experience (largest: 11 samples): each "
        "experience is one update on all its samples; set strategy.batch_size to at most 11 for more"
    ) in lines
    assert "warnings.warn(" not in err and "UserWarning" not in err  # no source line, no Python warning format


def test_one_class_folder_is_refused_in_one_line(tmp_path, capsys):
    _folder(tmp_path, classes=("cat",), corrupt=False)
    with pytest.raises(ValueError, match=r"has 1 class folder\(s\) \['cat'\]: classification needs at least two"):
        catalogue.load("folder", "cl", tmp_path, img_size=8)
    rc, err = _run(tmp_path, capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "needs at least two" in err


def test_skip_bad_images_is_for_folder_datasets_only(tmp_path, capsys):
    rc, err = main(["run", SMOKE, "scenario.skip_bad_images=true", f"log.out_dir={tmp_path}"]), capsys.readouterr().err
    assert rc == 2 and "scenario.skip_bad_images=true applies to folder datasets, not 'digits'" in err


def test_cli_prints_ctta_warnings_in_one_line(tmp_path, capsys):
    """The corrupted-checkpoint warning (raised in ctta.runner.checkpoint with a stacklevel inside ctta) printed
    ``warnings.warn(...)``'s source line; under the CLI's formatter it is one line."""
    from ctta.runner.checkpoint import load_latest, save_checkpoint

    path = save_checkpoint(tmp_path, {"x": 1}, step=5)
    path.write_bytes(b"truncated")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = one_line_warnings(_ctta_dirs())  # what ``main`` installs while a command runs
        assert load_latest(tmp_path) is None  # the run's resume path: scan_checkpoints called from ctta's code
    err = capsys.readouterr().err
    assert err.splitlines() == [f"ctta: warning: skipping unreadable checkpoint {path.name}: checksum mismatch "
                                "(truncated or partially written)"]  # fmt: skip
