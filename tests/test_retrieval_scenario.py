"""The retrieval scenario (scenarios/retrieval.py): every image of a dataset split by class, the first half of the
classes trains and the unseen second half is the test set (CUB-200 / Cars-196 protocol); digits and an FGVC folder."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from sklearn.datasets import load_digits

from ctta.registry import SCENARIOS
from ctta.templates.benchmark_info import benchmark_info
from tests.helpers import make_fgvc_cub, save_rgb


def _build(**kw):
    entry = SCENARIOS.get("retrieval")
    return entry.builder(entry.config(**kw), seed=0)


def _labels(exp) -> list[int]:
    return [int(y) for y in exp.dataset.targets]


def test_digits_first_half_trains_and_the_second_half_is_tested():
    bench = _build(dataset="digits", img_size=16)
    assert len(bench.train_stream) == len(bench.test_stream) == 1
    train, test = _labels(bench.train_stream[0]), _labels(bench.test_stream[0])
    counts = Counter(int(y) for y in load_digits().target)  # every image, official splits pooled
    assert Counter(train) == {c: counts[c] for c in range(5)}
    assert Counter(test) == {c: counts[c] for c in range(5, 10)}
    info = benchmark_info(bench)
    assert info.n_classes == 10 and info.task_classes == (tuple(range(5)),)
    assert info.stream_classnames["test"] == ("five", "six", "seven", "eight", "nine")
    assert info.test_dataset is bench.test_stream[0].dataset
    x, y, *_ = bench.test_stream[0].dataset[0]
    assert tuple(x.shape) == (3, 16, 16) and y >= 5


def test_train_classes_override_and_range():
    bench = _build(dataset="digits", img_size=8, train_classes=3)
    assert set(_labels(bench.train_stream[0])) == {0, 1, 2}
    assert set(_labels(bench.test_stream[0])) == set(range(3, 10))
    with pytest.raises(ValueError, match="train_classes"):
        _build(dataset="digits", img_size=8, train_classes=10)


def test_fgvc_splits_are_pooled_once(tmp_path):
    """CUB in VPT's json layout: train, val and test images pooled; an image listed twice counts once."""
    base = make_fgvc_cub(tmp_path)
    train = json.loads((base / "train.json").read_text())
    val = dict(list(train.items())[:3])  # a val split carved out of train (listed in both files)
    (base / "val.json").write_text(json.dumps(val))
    bench = _build(dataset="cub200", root=str(tmp_path), img_size=8)
    assert Counter(_labels(bench.train_stream[0])) == {0: 6}  # class 001: 4 train + 2 test, val duplicates dropped
    assert Counter(_labels(bench.test_stream[0])) == {1: 6}
    assert benchmark_info(bench).classnames == ("Black footed Albatross", "Laysan Albatross")
    x, *_ = bench.train_stream[0].dataset[0]
    assert tuple(x.shape) == (3, 8, 8)


def test_image_folder_reads_class_folders_as_the_reference_reads_cub(tmp_path):
    """``image_folder``: one sub-folder per class in sorted order (CUB's ``images/NNN.name``), every image."""
    sizes = {"001.Albatross": 2, "002.Auklet": 3, "003.Blackbird": 1, "004.Bobolink": 2}
    for c, n in sizes.items():
        for i in range(n):
            save_rgb(tmp_path / "images" / c / f"{i}.jpg")
    bench = _build(image_folder=str(tmp_path / "images"), img_size=8)
    assert Counter(_labels(bench.train_stream[0])) == {0: 2, 1: 3}
    assert Counter(_labels(bench.test_stream[0])) == {2: 1, 3: 2}
    assert benchmark_info(bench).stream_classnames["test"] == ("003.Blackbird", "004.Bobolink")


def _make_sop(base, reference_layout=False):
    """A tiny Stanford Online Products: classes 11 and 3 in Ebay_train.txt, 7 and 20 in Ebay_test.txt."""
    split_dir, image_dir = (base / "Info_Files", base / "images") if reference_layout else (base, base)
    rows = {"train": [(11, "bicycle_final/11_0.JPG"), (3, "chair_final/3_0.JPG"), (11, "bicycle_final/11_1.JPG"),
                      (3, "chair_final/3_1.JPG"), (3, "chair_final/3_2.JPG")],
            "test": [(20, "mug_final/20_0.JPG"), (7, "sofa_final/7_0.JPG"), (7, "sofa_final/7_1.JPG")]}  # fmt: skip
    split_dir.mkdir(parents=True, exist_ok=True)
    for split, items in rows.items():
        lines = ["image_id class_id super_class_id path"]
        lines += [f"{i + 1} {c} {c % 5 + 1} {path}" for i, (c, path) in enumerate(items)]
        (split_dir / f"Ebay_{split}.txt").write_text("\n".join(lines) + "\n")
        for i, (_, path) in enumerate(items):
            save_rgb(image_dir / path, colour=(10 * i, 20, 30))


@pytest.mark.parametrize("reference_layout", [False, True])
def test_sop_follows_the_official_split_files(tmp_path, reference_layout):
    """SOP: the Ebay_train classes (class-id order) train, the Ebay_test classes are the unseen test set."""
    _make_sop(tmp_path / "Stanford_Online_Products", reference_layout)
    bench = _build(dataset="sop", root=str(tmp_path), img_size=8)
    assert Counter(_labels(bench.train_stream[0])) == {0: 3, 1: 2}  # class 3 -> 0, class 11 -> 1
    assert Counter(_labels(bench.test_stream[0])) == {2: 2, 3: 1}  # class 7 -> 2, class 20 -> 3
    info = benchmark_info(bench)
    assert info.classnames == ("3", "11", "7", "20") and info.task_classes == ((0, 1),)
    x, y, *_ = bench.test_stream[0].dataset[0]
    assert tuple(x.shape) == (3, 8, 8) and y >= 2
    with pytest.raises(ValueError, match="train_classes"):
        _build(dataset="sop", root=str(tmp_path), train_classes=1)


def test_sop_missing_folder_or_split_file_names_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="Ebay_train.txt and Ebay_test.txt"):
        _build(dataset="sop", root=str(tmp_path))
    (tmp_path / "Stanford_Online_Products").mkdir()
    with pytest.raises(FileNotFoundError, match="Ebay_train.txt missing"):
        _build(dataset="sop", root=str(tmp_path))
