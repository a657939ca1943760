"""COCO-2014 / VOC-2007 label parsing and image order on tiny fake layouts; synthetic set (spec multilane §6.2)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from ctta.data.multilabel_datasets import (
    MultiLabelDataset,
    load_coco2014,
    load_voc2007,
    make_synthetic_multilabel,
    reference_transforms,
)

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip


def _img(path, color=(255, 0, 0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), color).save(path)


def _coco(tmp_path, split="train"):
    cats = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 2, "name": "airplane"}]
    images = [{"id": 10, "file_name": "b.jpg"}, {"id": 5, "file_name": "a.jpg"}, {"id": 7, "file_name": "c.jpg"}]
    anns = [
        {"image_id": 10, "category_id": 1},
        {"image_id": 10, "category_id": 1},  # duplicate category -> one label
        {"image_id": 10, "category_id": 2},
        {"image_id": 5, "category_id": 3},
    ]
    (tmp_path / "annotations").mkdir()
    with open(tmp_path / "annotations" / f"instances_{split}2014.json", "w") as fh:
        json.dump({"images": images, "annotations": anns, "categories": cats}, fh)
    for im in images:
        _img(tmp_path / f"{split}2014" / im["file_name"])


def test_coco_sorted_names_json_order_and_dedup(tmp_path):
    _coco(tmp_path)
    ds = load_coco2014(tmp_path, "train")
    assert ds.classes == ["airplane", "car", "person"]
    assert [p.name for p in ds.items] == ["b.jpg", "a.jpg", "c.jpg"]  # JSON order, not sorted
    assert ds.label_sets == [(0, 2), (1,), ()]  # image 7 has no annotation -> empty label set
    x, y = ds[0]
    assert isinstance(x, Image.Image) and y.tolist() == [1.0, 0.0, 1.0]
    assert ds.targets.tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    tf = reference_transforms(16)[1]
    assert MultiLabelDataset(ds.items, ds.label_sets, ds.classes, tf)[1][0].shape == (3, 16, 16)


def test_coco_missing_raises_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="MS-COCO 2014.*instances_train2014"):
        load_coco2014(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="annotation file"):
        load_coco2014(tmp_path, "val")
    with pytest.raises(ValueError, match="split"):
        load_coco2014(tmp_path, "test")


def _voc(tmp_path, table, split="trainval"):
    main = tmp_path / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    main.mkdir(parents=True)
    for cls, rows in table.items():
        (main / f"{cls}_{split}.txt").write_text("".join(f"{i} {v:2d}\n" for i, v in rows))
    (main / f"{split}.txt").write_text("".join(f"{i}\n" for i, _ in next(iter(table.values()))))
    ids = {i for rows in table.values() for i, _ in rows}
    for i in ids:
        _img(tmp_path / "VOCdevkit" / "VOC2007" / "JPEGImages" / f"{i}.jpg")


def test_voc_positive_only_one_and_first_appearance_order(tmp_path):
    # files are read in sorted order: aeroplane first (image order 000009, 000005), then bus adds 000012
    table = {
        "bus": [("000005", 1), ("000012", 0), ("000009", -1)],
        "aeroplane": [("000009", 1), ("000005", 0)],
    }
    _voc(tmp_path, table)
    ds = load_voc2007(tmp_path, "trainval")
    assert ds.classes == ["aeroplane", "bus"]
    assert [p.stem for p in ds.items] == ["000009", "000005", "000012"]
    assert ds.label_sets == [(0,), (1,), ()]  # 0 (difficult) and -1 are negative


def test_voc_class_list_is_sorted_file_names(tmp_path):
    table = {c: [("000001", 1 if c == "dog" else -1)] for c in reversed(VOC_CLASSES)}
    _voc(tmp_path, table, split="test")
    ds = load_voc2007(tmp_path / "VOCdevkit", "test")  # VOC2007 sub-folder found
    assert ds.classes == VOC_CLASSES and ds.label_sets == [(11,)]


def test_voc_missing_and_malformed(tmp_path):
    with pytest.raises(FileNotFoundError, match="PASCAL VOC 2007"):
        load_voc2007(tmp_path / "nope")
    _voc(tmp_path, {"cat": [("000001", 1)]})
    with pytest.raises(FileNotFoundError, match="_test.txt"):
        load_voc2007(tmp_path, "test")
    f = tmp_path / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "cat_trainval.txt"
    f.write_text("000001 2\n")
    with pytest.raises(ValueError, match="1\\|0\\|-1"):
        load_voc2007(tmp_path)


def test_synthetic_deterministic_every_class_present():
    tr, te = make_synthetic_multilabel(num_classes=6, n_train=18, n_test=12, img_size=16, seed=3)
    tr2, _ = make_synthetic_multilabel(num_classes=6, n_train=18, n_test=12, img_size=16, seed=3)
    assert len(tr) == 18 and len(te) == 12 and tr.label_sets == tr2.label_sets
    x, y = tr[4]
    assert x.shape == (3, 16, 16) and torch.equal(x, tr2[4][0]) and y[4] == 1
    assert (tr.targets.sum(0) > 0).all() and (te.targets.sum(0) > 0).all()
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    with pytest.raises(ValueError, match="num_classes"):
        make_synthetic_multilabel(num_classes=6, n_train=3)


def test_bad_label_index_raises():
    with pytest.raises(ValueError, match="out of range"):
        MultiLabelDataset([torch.zeros(3, 2, 2)], [(5,)], ["a", "b"])
