"""CIFAR-100 / Tiny-ImageNet / ImageNet-R loaders on tiny fake layouts (spec si-blurry-mvp §3)."""

from __future__ import annotations

import pytest
import torch

from ctta.data.cl_datasets import (
    DATASET_STATS,
    imagenet_r_split,
    load_cifar100,
    load_cl_dataset,
    load_imagenet_r,
    load_tiny_imagenet,
)
from tests.helpers import make_cifar, make_imagenet_r, make_tiny


# ----------------------------------------------------------------------------------------------------- tests
def test_stats_follow_the_spec():
    assert DATASET_STATS["cifar100"].mean == (0.5071, 0.4867, 0.4408)
    assert DATASET_STATS["cifar100"].std == (0.2675, 0.2565, 0.2761)
    assert DATASET_STATS["cifar100"].autoaugment == "cifar10"
    assert DATASET_STATS["tinyimagenet"].mean == (0.4802, 0.4481, 0.3975)
    assert DATASET_STATS["tinyimagenet"].std == (0.2302, 0.2265, 0.2262)
    assert DATASET_STATS["tinyimagenet"].autoaugment == "imagenet"
    assert DATASET_STATS["imagenet_r"].mean == (0.485, 0.456, 0.406)
    assert DATASET_STATS["imagenet_r"].autoaugment == "imagenet"
    assert [DATASET_STATS[d].n_classes for d in ("cifar100", "tinyimagenet", "imagenet_r")] == [100, 200, 200]


def test_cifar100_pickle_order_and_pixels(tmp_path):
    labels = make_cifar(tmp_path)
    train, test = load_cifar100(tmp_path)
    assert train.targets == labels and len(test) == 10
    assert train.classes[3] == "class 3"
    x, y = train[5]
    assert x.shape == (3, 32, 32) and y == labels[5]
    assert x[0, 0, 0].item() == pytest.approx(5 / 255)  # red channel = sample index
    assert x[1, 0, 1].item() == pytest.approx(200 / 255) and x[1, 1, 0].item() == 0.0  # HWC layout kept


def test_tiny_imagenet_orders_and_labels(tmp_path):
    make_tiny(tmp_path)
    train, test = load_tiny_imagenet(tmp_path)
    # ImageFolder order: sorted folders n01, n02, n03, sorted files; labels = index in wnids.txt
    assert [p.split("/")[-1] for p, _ in train.samples] == [
        "n01_0.JPEG", "n01_1.JPEG", "n02_0.JPEG", "n02_1.JPEG", "n03_0.JPEG", "n03_1.JPEG",
    ]  # fmt: skip
    assert train.targets == [1, 1, 2, 2, 0, 0]
    assert test.targets == [2, 0, 1]  # val_0 -> n02, val_1 -> n03, val_2 -> n01
    assert train.classes == ["cat", "goldfish", "shark"]
    x, y = train[1]
    assert x.shape == (3, 8, 8) and y == 1 and x.max().item() == pytest.approx(10 / 255, abs=2 / 255)


def test_imagenet_r_split_and_dataset_crop(tmp_path):
    make_imagenet_r(tmp_path)
    train, test = load_imagenet_r(tmp_path)
    tr_idx, te_idx = imagenet_r_split(10)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    assert tr_idx == sorted(perm[:8].tolist()) and te_idx == sorted(perm[8:].tolist())
    all_targets = [0] * 4 + [1] * 3 + [2] * 3
    assert train.targets == [all_targets[i] for i in tr_idx]
    assert test.targets == [all_targets[i] for i in te_idx]
    assert train.classes == ["goldfish", "great white shark", "n00000002"]
    assert train[0][0].shape == (3, 224, 224) and test[0][0].shape == (3, 224, 224)


def test_imagenet_r_center_crop_option(tmp_path):
    make_imagenet_r(tmp_path)
    _, test = load_imagenet_r(tmp_path, test_center_crop=True)
    torch.manual_seed(0)
    a = test[0][0]
    torch.manual_seed(1)
    assert torch.equal(a, test[0][0])


@pytest.mark.parametrize(
    "name, loader, url",
    [
        ("cifar100", load_cifar100, "cifar-100-python.tar.gz"),
        ("tinyimagenet", load_tiny_imagenet, "tiny-imagenet-200.zip"),
        ("imagenet_r", load_imagenet_r, "imagenet-r.tar"),
    ],
)
def test_missing_folder_says_what_to_download(tmp_path, name, loader, url):
    with pytest.raises(FileNotFoundError, match=url) as err:
        loader(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)
    with pytest.raises(FileNotFoundError, match=url):
        load_cl_dataset(name, tmp_path / "nowhere")


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_cl_dataset("mnist", ".")


def test_si_blurry_builder_on_fake_cifar(tmp_path):
    from ctta.scenarios.si_blurry import SiBlurryConfig, build_si_blurry

    labels = make_cifar(tmp_path, n_classes=10, per_class=6)
    bench = build_si_blurry(SiBlurryConfig(dataset="cifar100", root=str(tmp_path), img_size=32), seed=1)
    assert bench.info.n_classes == 10 and bench.info.classnames[0] == "class 0"
    assert sorted(i for t in bench.info.task_indices for i in t) == list(range(len(labels)))
    assert bench.info.train_augment.autoaugment.policy.value == "cifar10"
    x, _ = bench.info.test_dataset[0]
    assert x.shape == (3, 32, 32) and x.min().item() < 0  # normalised by the test transform
    x, _ = bench.train_stream[0].dataset[0]
    assert 0.0 <= x.min().item() and x.max().item() <= 1.0  # raw ToTensor image; augmented per step
