"""DAM-VP downstream datasets on tiny fake folder layouts, and the ``transfer`` scenario."""

from __future__ import annotations

import json

import pytest
import torch
from ctta.scenarios.transfer import TransferConfig, build_transfer
from PIL import Image

from ctta.data.transfer_datasets import damvp_transforms, load_transfer_dataset
from tests.helpers import make_fgvc_cub as _fgvc_cub
from tests.helpers import save_rgb as _img


def test_fgvc_json_splits_class_ids_and_names(tmp_path):
    _fgvc_cub(tmp_path)
    data = load_transfer_dataset("cub200", tmp_path)
    assert (len(data.train), len(data.val), len(data.test)) == (8, 4, 4)
    assert data.classnames == ["Black footed Albatross", "Laysan Albatross"]
    assert sorted(set(data.train.targets)) == [0, 1]
    x, y = data.test[0]
    assert isinstance(x, Image.Image) and y in (0, 1)


def test_fgvc_class_missing_from_train_raises(tmp_path):
    base = _fgvc_cub(tmp_path)
    anno = json.loads((base / "test.json").read_text())
    anno["003.x/new.jpg"] = "003"
    (base / "test.json").write_text(json.dumps(anno))
    with pytest.raises(ValueError, match="absent from train"):
        load_transfer_dataset("cub200", tmp_path)


def test_vtab_1k_lists(tmp_path):
    base = tmp_path / "vtab-1k" / "dtd"
    for split, n in (("train800", 6), ("val200", 2), ("test", 3)):
        lines = []
        for i in range(n):
            _img(base / "images" / f"{split}_{i}.jpg")
            lines.append(f"images/{split}_{i}.jpg {i % 3}")
        (base / f"{split}.txt").write_text("\n".join(lines) + "\n")
    data = load_transfer_dataset("vtab-dtd", tmp_path)
    assert (len(data.train), len(data.val), len(data.test)) == (6, 2, 3) and len(data.classnames) == 3


def test_food101_80_20_cut_is_disjoint_and_deterministic(tmp_path):
    base = tmp_path / "torchvision_dataset" / "food-101"
    meta = {c: [f"{c}/{i}" for i in range(10)] for c in ("apple_pie", "baklava")}
    for files in meta.values():
        for f in files:
            _img(base / "images" / f"{f}.jpg")
    (base / "meta").mkdir(parents=True)
    (base / "meta" / "train.json").write_text(json.dumps(meta))
    (base / "meta" / "test.json").write_text(json.dumps({c: v[:2] for c, v in meta.items()}))
    a, b = load_transfer_dataset("food101", tmp_path), load_transfer_dataset("food101", tmp_path)
    train, val = [str(p) for p, _ in a.train.samples], [str(p) for p, _ in a.val.samples]
    assert (len(train), len(val), len(a.test)) == (16, 4, 4) and not set(train) & set(val)
    assert train == [str(p) for p, _ in b.train.samples]
    assert set(a.train.targets) == {0, 1}  # the fixed permutation mixes the class-sorted native order


def test_dtd_official_split_and_aircraft_variants(tmp_path):
    dtd = tmp_path / "torchvision_dataset" / "dtd" / "dtd"
    for c in ("banded", "zigzagged"):
        for i in range(3):
            _img(dtd / "images" / c / f"{c}_{i}.jpg")
    (dtd / "labels").mkdir(parents=True)
    for split, i in (("train", 0), ("val", 1), ("test", 2)):
        (dtd / "labels" / f"{split}1.txt").write_text(f"banded/banded_{i}.jpg\nzigzagged/zigzagged_{i}.jpg\n")
    data = load_transfer_dataset("dtd", tmp_path)
    assert data.classnames == ["banded", "zigzagged"] and data.test.targets == [0, 1]
    air = tmp_path / "FGVC" / "fgvc-aircraft-2013b" / "data"
    (air / "images").mkdir(parents=True)
    (air / "variants.txt").write_text("Boeing 707\nA300B4\n")
    for split, ids in (("train", ("1", "2")), ("val", ("3",)), ("test", ("4",))):
        for i in ids:
            _img(air / "images" / f"{i}.jpg")
        (air / f"images_variant_{split}.txt").write_text("".join(f"{i} Boeing 707\n" for i in ids))
    air_data = load_transfer_dataset("fgvc-aircraft", tmp_path)
    assert air_data.classnames == ["A300B4", "Boeing 707"] and air_data.train.targets == [1, 1]


def test_missing_datasets_raise_with_instructions(tmp_path):
    with pytest.raises(FileNotFoundError, match="CUB_200_2011"):
        load_transfer_dataset("cub200", tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_transfer_dataset("cifar10", tmp_path)
    with pytest.raises(FileNotFoundError, match="train800"):
        load_transfer_dataset("vtab-eurosat", tmp_path)
    with pytest.raises(KeyError, match="unknown transfer dataset"):
        load_transfer_dataset("imagenet-z", tmp_path)


def test_reference_transforms():
    img = Image.new("RGB", (400, 300), (255, 0, 0))
    x = damvp_transforms("train", 224, "half")(img)
    e = damvp_transforms("eval", 224, "imagenet")(img)
    assert x.shape == e.shape == (3, 224, 224)
    assert torch.allclose(x[0], torch.ones(224, 224)) and torch.allclose(x[1], -torch.ones(224, 224))
    with pytest.raises(ValueError, match="normalization"):
        damvp_transforms("eval", 224, "bogus")


def test_transfer_scenario_offsets_task_labels_and_streams(tmp_path):
    _fgvc_cub(tmp_path)
    for split in ("train", "val", "test"):
        for c in ("cat", "dog", "owl"):
            _img(tmp_path / "pets" / split / c / "a.png", (0, 200, 0))
    cfg = TransferConfig(datasets=("cub200", "imagefolder:pets"), root=str(tmp_path), img_size=32)
    bench = build_transfer(cfg, seed=0)
    assert bench.info.n_classes == 5 and bench.info.task_classes == ((0, 1), (2, 3, 4))
    assert bench.info.dataset_names == ("cub200", "imagefolder:pets") and len(bench.info.classnames) == 5
    assert [len(e.dataset) for e in bench.valid_stream] == [4, 3]
    x, y, t = bench.train_stream[1].dataset[0]
    assert x.shape == (3, 32, 32) and y in (2, 3, 4) and t == 1
    assert sorted(set(bench.info.test_dataset.targets)) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="empty"):
        build_transfer(TransferConfig(datasets=()), seed=0)


def test_synthetic_digit_datasets_differ_in_classes_and_colour():
    bench = build_transfer(TransferConfig(datasets=("digits/0/2", "digits/1/2"), img_size=16, max_per_split=20), seed=0)
    info = bench.info
    assert info.task_classes == ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9)) and info.experience_classnames[1][0] == "five"
    x0, x1 = bench.train_stream[0].dataset.eval()[0][0], bench.train_stream[1].dataset.eval()[0][0]
    assert x0.shape == (3, 16, 16) and not torch.allclose(x0.mean((1, 2)), x1.mean((1, 2)))
    with pytest.raises(ValueError, match="digits"):
        build_transfer(TransferConfig(datasets=("digits/2/2",), img_size=16), seed=0)
