"""Regression tests of the data defects of issue 11: ``class_incremental`` reads every labelled dataset of the
catalogue (on small synthetic layouts in the real on-disk formats), the ``folder`` source yields tensors that
default batching stacks, and ``ctta run`` with a missing dataset says what to download and where to put it."""

from __future__ import annotations

import pytest
import torch
from ctta.scenarios.class_incremental import ClassIncrementalConfig
from PIL import Image
from torch.utils.data import DataLoader

from ctta.registry import SCENARIOS
from tests.helpers import make_cifar, make_fgvc_cub, make_imagenet_r, make_tiny


def _build(dataset: str, root, **kw):
    cfg = ClassIncrementalConfig(dataset=dataset, root=str(root), **kw)
    return SCENARIOS.get("class_incremental").builder(cfg, seed=0)


@pytest.mark.parametrize(
    "dataset, make, n_classes, n_train",
    [
        ("cifar100", make_cifar, 10, 30),  # <root>/cifar-100-python pickles
        ("tinyimagenet", make_tiny, 3, 6),  # <root>/tiny-imagenet-200
        ("imagenet_r", make_imagenet_r, 3, 8),  # <root>/imagenet-r, the reference 80/20 split of 10 images
        ("cub200", make_fgvc_cub, 2, 8),  # a DAM-VP transfer set: <root>/FGVC/CUB_200_2011 with VPT's json splits
    ],
)
def test_class_incremental_reads_the_catalogue(tmp_path, dataset, make, n_classes, n_train):
    make(tmp_path)
    bench = _build(dataset, tmp_path, n_experiences=2, img_size=16)
    assert bench.info.n_classes == n_classes and len(bench.info.classnames) == n_classes
    train = list(bench.train_stream)
    assert len(train) == 2 and sum(len(e.dataset) for e in train) == n_train  # every training image, once
    assert sorted(c for g in bench.info.task_classes for c in g) == list(range(n_classes))
    x, y, *_ = next(iter(DataLoader(train[0].dataset, batch_size=4)))
    assert x.shape[1:] == (3, 16, 16) and x.dtype == torch.float32 and len(x) == len(y)


def _folder(root, sizes=((20, 12), (9, 31), (16, 16))):
    for split in ("train", "test"):
        for c, cls in enumerate(("cat", "dog")):
            for k, size in enumerate(sizes):  # images of different sizes and aspect ratios
                path = root / split / cls / f"{k}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", size, (100 * c, 10 * k, 50)).save(path)


def test_folder_source_batches_stack(tmp_path):
    from ctta.data import catalogue

    _folder(tmp_path)
    train, test = catalogue.load("folder", "cl", tmp_path, img_size=24)
    x, y = next(iter(DataLoader(train, batch_size=6)))
    assert x.shape == (6, 3, 24, 24) and y.tolist() == [0, 0, 0, 1, 1, 1]
    assert next(iter(DataLoader(test, batch_size=6)))[0].shape == (6, 3, 24, 24)


def test_folder_scenario_batches_stack(tmp_path):
    _folder(tmp_path)
    bench = _build("folder", tmp_path, n_experiences=2, img_size=8)  # through the scenario, at its img_size
    x, *_ = next(iter(DataLoader(bench.train_stream[0].dataset, batch_size=3)))
    assert x.shape == (3, 3, 8, 8)


def test_ctta_run_with_a_missing_dataset_says_what_to_download_and_where(tmp_path, capsys):
    from ctta.runner.cli import main
    from tests.helpers import ROOT

    rc = main(
        [
            "run",
            str(ROOT / "configs" / "smoke" / "vpt_digits.yaml"),
            "scenario.dataset=tinyimagenet",
            f"scenario.root={tmp_path}",
            f"log.out_dir={tmp_path}/out",
            "device=cpu",
        ]
    )
    assert rc == 2  # a user error (issue 13: one message, exit code 2)
    err = capsys.readouterr().err
    assert "Tiny-ImageNet not found" in err and "tiny-imagenet-200.zip" in err
    assert str(tmp_path / "tiny-imagenet-200") in err
