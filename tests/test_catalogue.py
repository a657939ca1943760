"""The one dataset catalogue: every name has a folder, a "how to get it" text and importable loaders; scenarios and
loader modules read their names from it; a missing dataset says where it goes and how to get it."""

from __future__ import annotations

import importlib

import pytest

from ctta.data import catalogue
from ctta.data.catalogue import UnknownDatasetError

SAMPLE = {"vtab-<task>": "vtab-eurosat", "imagefolder:<dir>": "imagefolder:pets", "digits/<k>/<n>": "digits/1/2"}
SAMPLE["imagenet_c/<corruption>/<severity>"] = "imagenet_c/fog/3"
ALL = [(e, kind) for e in catalogue.entries() for kind in e.loaders]


def test_names_are_unique_per_kind_and_kinds_known():
    seen = [(e.name, kind) for e, kind in ALL]
    assert len(seen) == len(set(seen))
    assert {kind for _, kind in ALL} == set(catalogue.KINDS)
    # the datasets every scenario reads
    assert {"cifar100", "tinyimagenet", "imagenet_r", "digits", "folder"} <= set(catalogue.names("cl"))
    assert {"imagenet", "imagenet_a", "imagenet_v2", "imagenet_r", "imagenet_sketch", "aircraft"} <= set(
        catalogue.names("test_time")
    )
    assert {"flower102", "dtd", "pets", "cars", "ucf101", "caltech101", "food101", "sun397", "eurosat"} <= set(
        catalogue.names("test_time")
    )
    assert {"cifar100", "cub200", "fgvc-aircraft", "vtab-<task>", "imagefolder:<dir>"} <= set(
        catalogue.names("transfer")
    )
    assert catalogue.names("multilabel") == ["coco", "voc", "synthetic"]


@pytest.mark.parametrize("entry, kind", ALL, ids=[f"{kind}:{e.name}" for e, kind in ALL])
def test_every_entry_says_where_and_how_and_has_a_loader(entry, kind):
    assert entry.title and entry.how_to_get() and "<folder>" not in entry.how_to_get()
    assert entry.bundled == (not entry.folders)
    module, _, fn = entry.loaders[kind].partition(":")
    assert callable(getattr(importlib.import_module(module), fn))


def test_loader_modules_read_their_names_from_the_catalogue():
    from ctta.data.cl_datasets import DATASET_STATS
    from ctta.data.transfer_datasets import TRANSFER_DATASETS
    from ctta.data.tta_datasets import IMAGENET_FAMILY, TTA_DATASETS

    assert tuple(catalogue.names("test_time")) == TTA_DATASETS
    assert set(IMAGENET_FAMILY) == {"imagenet", "imagenet_a", "imagenet_v2", "imagenet_r", "imagenet_sketch"}
    assert set(TRANSFER_DATASETS) < set(catalogue.names("transfer"))
    assert DATASET_STATS["cifar100"] is catalogue.entry("cifar100", "cl").stats
    assert sorted(DATASET_STATS) == ["cifar100", "digits", "imagenet_r", "tinyimagenet"]


def test_same_name_in_two_kinds_and_families():
    assert catalogue.entry("cifar100", "cl").folder == "cifar-100-python"
    assert catalogue.entry("cifar100", "transfer").folder == "torchvision_dataset/cifar-100-python"
    assert catalogue.entry("imagenet_r", "cl") is catalogue.entry("imagenet_r", "test_time")
    vtab = catalogue.entry("vtab-eurosat", "transfer")
    assert vtab.name == "vtab-eurosat" and vtab.folder == "vtab-1k/eurosat" and "'eurosat'" in vtab.how_to_get()
    assert catalogue.entry("imagefolder:pets", "transfer").folder == "pets"
    assert catalogue.entry("digits/1/2", "transfer").bundled
    # the first kind that has the name wins
    assert catalogue.entry("cifar100", ("cl", "transfer")).folder == "cifar-100-python"
    assert catalogue.entry("cub200", ("cl", "transfer")).folder == "FGVC/CUB_200_2011"


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UnknownDatasetError, match=r"unknown test-time dataset 'mnist'; valid datasets: \[.*'dtd'"):
        catalogue.entry("mnist", "test_time")
    with pytest.raises(KeyError, match="unknown transfer dataset"):
        catalogue.load("mnist", "transfer", ".")
    with pytest.raises(ValueError, match="unknown multi-label dataset"):
        catalogue.load("nus", "multilabel", ".")
    assert str(UnknownDatasetError("plain message")) == "plain message"  # not KeyError's quoted repr


@pytest.mark.parametrize(
    "entry, kind", [(e, k) for e, k in ALL if not e.bundled], ids=[f"{k}:{e.name}" for e, k in ALL if not e.bundled]
)
def test_a_missing_dataset_says_where_it_goes_and_how_to_get_it(tmp_path, entry, kind):
    entry = catalogue.entry(SAMPLE.get(entry.name, entry.name), kind)
    root = tmp_path / "data"
    with pytest.raises(FileNotFoundError) as err:
        entry.load(kind, root)
    msg = str(err.value)
    assert entry.how_to_get() in msg
    assert str(entry.path(root, "train" if entry.name == "folder" else None)) in msg


def test_register_a_users_dataset(tmp_path, monkeypatch):
    monkeypatch.setattr(catalogue, "_REGISTERED", [])
    mine = catalogue.DatasetEntry(
        "mine", "my set", ("my-set",), "Copy it to <folder>.", {"cl": "ctta.data.folder:load_folder"}
    )
    catalogue.register(mine)
    assert catalogue.entry("mine", "cl") is mine and mine.how_to_get() == "Copy it to <root>/my-set."
    with pytest.raises(ValueError, match="duplicate dataset name 'cifar100'"):
        catalogue.register(catalogue.DatasetEntry("cifar100", "x", (), "", {"cl": "m:f"}))
    with pytest.raises(ValueError, match="unknown kind"):
        catalogue.register(catalogue.DatasetEntry("other", "x", (), "", {"video": "m:f"}))


def test_multilane_cil_imagenet_r_has_only_the_reference_transforms(tmp_path):
    """MULTI-LANE's ImageNet-R (kind cl, ``fixed_crop=False``) skips Si-Blurry's in-dataset 256/224 crop."""
    from torchvision.transforms import ToTensor

    from tests.helpers import make_imagenet_r

    make_imagenet_r(tmp_path)  # 20 x 30 images
    entry = catalogue.entry("imagenet_r", "cl")
    _, test = entry.load("cl", tmp_path, train_transform=ToTensor(), test_transform=ToTensor(), fixed_crop=False)
    assert test[0][0].shape == (3, 30, 20)
    _, test = entry.load("cl", tmp_path, train_transform=ToTensor(), test_transform=ToTensor())
    assert test[0][0].shape == (3, 224, 224)
    from ctta.scenarios.multilabel import MultiLaneCILConfig, build_multilane_cil

    bench = build_multilane_cil(
        MultiLaneCILConfig(dataset="imagenet_r", root=str(tmp_path), n_experiences=1, img_size=16)
    )
    assert bench.info.n_classes == 3 and bench.train_stream[0].dataset[0][0].shape == (3, 16, 16)


def test_few_shot_reads_coop_split_files_in_either_folder_layout(tmp_path):
    import json

    from PIL import Image

    split = {
        s: [[f"{c}_{s}.jpg", y, c] for y, c in enumerate(("abyssinian", "beagle"))] for s in ("train", "val", "test")
    }
    for root, folder, images in ((tmp_path / "coop", "oxford_pets", "images"), (tmp_path / "tpt", "OxfordPets", "")):
        base = root / folder
        (base / images).mkdir(parents=True, exist_ok=True)
        for rows in split.values():
            for rel, _, _ in rows:
                Image.new("RGB", (4, 4)).save(base / images / rel)
        (base / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
        for name in ("oxford_pets", "pets"):  # CoOp's name is an alias of TPT's
            items = catalogue.load(name, "few_shot", root)
            assert items["val"][1] == (str(base / images / "beagle_val.jpg"), 1, "beagle")
    assert catalogue.entry("oxford_pets", "test_time").name == "pets"
