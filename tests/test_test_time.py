"""Test-time streams: golden label spaces of the 15 TPT sets, ImageNet-V2/A/R folder label rules, CoOp split
reading, subsets, corruption sequences and the registered ``test_time`` scenario on the bundled digits."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from ctta.scenarios.test_time import TestTimeConfig, build_test_time
from PIL import Image

from ctta.data import classnames as cn
from ctta.data.corruptions import ON_THE_FLY, corrupt
from ctta.data.digits import DIGIT_NAMES
from ctta.data.tta_datasets import load_tta_dataset, select_subset
from ctta.registry import SCENARIOS

# sha256("\n".join(names))[:16] of the reference lists (azshue/TPT@63ecbace data/cls_to_names.py)
GOLDEN = {
    "flower102": (102, "0d27092c2140383d"),
    "dtd": (47, "681d23b9cd3c2ede"),
    "pets": (37, "8e35ab44db27d55a"),
    "cars": (196, "2caca90b5c02b65f"),
    "ucf101": (101, "d22e81fba7ebebf0"),
    "caltech101": (100, "84f9ff49dce58ae6"),
    "food101": (101, "a5845564e1140c17"),
    "sun397": (397, "583c0fad85d22c56"),
    "aircraft": (100, "e1c9e72060e63d52"),
    "eurosat": (10, "bcff3a8022b63397"),
}


def test_golden_label_spaces():
    for name, (n, digest) in GOLDEN.items():
        names = cn.classnames(name)
        assert len(names) == n and hashlib.sha256("\n".join(names).encode()).hexdigest()[:16] == digest, name
    assert cn.classnames("caltech101")[:3] == ["face", "leopard", "motorbike"]
    assert cn.classnames("eurosat")[0] == "Annual Crop Land"
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    assert cn.classnames("imagenet") == list(IMAGENET_CLASSNAMES) and len(IMAGENET_CLASSNAMES) == 1000
    wnids = cn.imagenet_wnids()
    assert len(wnids) == 1000 and wnids == sorted(wnids)
    for sub in ("imagenet_a", "imagenet_r"):
        idx = cn.imagenet_subset_indices(sub)
        assert len(idx) == 200 and idx == sorted(idx) and len(cn.classnames(sub)) == 200
        assert cn.imagenet_subset_wnids(sub) == [wnids[i] for i in idx]
    assert cn.imagenet_subset_indices("imagenet_a")[:5] == [6, 11, 13, 15, 17]  # TPT's imagenet_a_mask
    with pytest.raises(KeyError, match="valid"):
        cn.classnames("mnist")


def test_imagenet_v2_int_labels_equal_string_sort_plus_remap():
    order = cn.imagenet_v2_label_order()
    string_sorted = sorted(str(i) for i in range(1000))
    assert order[:4] == [0, 1, 10, 100]
    assert all(order[string_sorted.index(f)] == int(f) for f in string_sorted)


def _img(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (120, 30, 200)).save(path)


def test_imagenet_v2_and_a_folders(tmp_path):
    v2 = tmp_path / "imagenetv2-matched-frequency-format-val"
    for i in range(1000):
        (v2 / str(i)).mkdir(parents=True)
    for f in ("0", "10", "999"):
        _img(v2 / f / "a.jpeg")
    ds = load_tta_dataset("imagenet_v2", tmp_path)
    assert sorted(ds.targets) == [0, 10, 999] and len(ds.classnames) == 1000
    a = tmp_path / "imagenet-a"
    wn = cn.imagenet_subset_wnids("imagenet_a")
    for w in wn:
        (a / w).mkdir(parents=True)
    _img(a / wn[3] / "x.jpg")
    ds = load_tta_dataset("imagenet_a", tmp_path)
    assert (
        ds.targets == [3] and ds.classnames[3] == cn.classnames("imagenet")[cn.imagenet_subset_indices("imagenet_a")[3]]
    )
    (a / "n99999999").mkdir()
    with pytest.raises(ValueError, match="shipped 200 wnids"):
        load_tta_dataset("imagenet_a", tmp_path)
    with pytest.raises(FileNotFoundError, match="natural-adv-examples"):
        load_tta_dataset("imagenet_a", tmp_path / "nowhere")


def test_coop_split_reader_and_subsets(tmp_path):
    base = tmp_path / "eurosat"
    entries = [[f"Forest/img{i}.jpg", 1, "Forest"] for i in range(3)] + [["River/r.jpg", 8, "River"]]
    for rel, *_ in entries:
        _img(base / "2750" / rel)  # CoOp's image folder
    (base / "split_zhou_EuroSAT.json").write_text(json.dumps({"train": [], "val": [], "test": entries}))
    ds = load_tta_dataset("eurosat", tmp_path)
    assert ds.targets == [1, 1, 1, 8] and ds.family == "fine_grained" and ds.classnames[8] == "River"
    assert ds.dataset[3][0].size == (40, 30)
    (tmp_path / "list.txt").write_text("River/r.jpg\nForest/img0.jpg\n")
    assert select_subset(ds, str(tmp_path / "list.txt"), 0) == [3, 0]
    assert len(select_subset(ds, "difftpt_1k", 0)) == 4 and select_subset(ds, "full", 0) == [0, 1, 2, 3]
    with pytest.raises(FileNotFoundError, match="split_zhou_DescribableTextures.json"):
        (tmp_path / "dtd").mkdir()
        load_tta_dataset("dtd", tmp_path)


def test_digits_stream_views_and_worker_invariance():
    cfg = TestTimeConfig(dataset="digits", n_views=5, resolution=32, max_samples=6)
    bench = SCENARIOS.get("test_time").builder(cfg, seed=3)
    exp = bench.test_stream[0]
    assert len(exp.dataset) == 6 and exp.classnames == list(bench.info.classnames) == list(DIGIT_NAMES)
    assert bench.info.n_views == 5 and len(bench.info.sample_indices[0]) == 6
    x, y = exp.dataset[0][:2]
    assert x.shape == (5, 3, 32, 32) and 0 <= int(y) < 10
    # the same source sample gets the same views whatever the stream order (per-sample generator)
    first = int(np.random.default_rng([3, 0]).permutation(450)[0])  # the sample shuffled to position 0
    unshuffled = build_test_time(TestTimeConfig(dataset="digits", n_views=5, resolution=32, shuffle=False), seed=3)
    assert torch.equal(unshuffled.test_stream[0].dataset[first][0], x)
    assert not torch.equal(unshuffled.test_stream[0].dataset[first + 1][0], x)


def test_corruption_sequence_and_domain_sequence():
    cfg = TestTimeConfig(
        dataset="digits",
        n_views=3,
        resolution=32,
        max_samples=2,
        corruptions=("gaussian_noise", "jpeg_compression"),
        severities=(1, 5),
    )
    bench = build_test_time(cfg, seed=0)
    assert len(bench.test_stream) == 4 and all(tuple(e.classnames) == bench.info.classnames for e in bench.test_stream)
    assert bench.test_stream[1].dataset[0][0].shape == (3, 3, 32, 32)
    with pytest.raises(ValueError, match="corruption_root"):
        build_test_time(TestTimeConfig(dataset="digits", corruptions=("frost",), resolution=32), seed=0)
    img = Image.new("RGB", (32, 32), (100, 150, 200))
    for name in ON_THE_FLY:
        out = corrupt(img, name, 3, np.random.default_rng(0))
        assert out.size == (32, 32) and out.mode == "RGB"
    seq = build_test_time(
        TestTimeConfig(datasets=("digits", "digits"), n_views=2, resolution=32, max_samples=2), seed=0
    )
    assert len(seq.test_stream) == 2 and seq.info.experience_classnames[1] == seq.info.classnames
    with pytest.raises(ValueError, match="unknown test-time dataset"):
        TestTimeConfig(dataset="imagenet_b")
