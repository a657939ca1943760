"""The domain-adaptation scenario (scenarios/domain_adaptation.py) and its catalogue readers (ctta/data/da_datasets.py):
labelled source, unlabelled target (every label -1), labelled target test; Dassl folder layouts on tiny files."""

from __future__ import annotations

import pytest
from ctta.scenarios.domain_adaptation import UNLABELLED, DomainAdaptationConfig, build_domain_adaptation

from ctta.data import catalogue
from ctta.templates.transductive import target_images
from tests.helpers import save_rgb


@pytest.fixture(scope="module")
def digits_bench():
    cfg = DomainAdaptationConfig(dataset="digits_shift", source="clean", target="pixelate", img_size=16, max_items=40)
    return build_domain_adaptation(cfg)


def test_streams_source_labelled_target_unlabelled_test_labelled(digits_bench):
    b = digits_bench
    assert list(b.streams) == ["train", "target", "test"]
    src, tgt, test = (b.streams[k][0].dataset for k in ("train", "target", "test"))
    assert len(src) == len(tgt) == len(test) == 40
    assert set(tgt.targets) == {UNLABELLED}
    assert all(tgt[i][1] == UNLABELLED for i in range(len(tgt)))
    assert len(set(test.targets)) > 1 and min(test.targets) >= 0
    assert b.info.classnames[:2] == ("zero", "one") and b.info.n_classes == 10
    assert b.info.test_dataset is test


def test_target_images_come_from_the_target_stream(digits_bench):
    """The transductive template adapts on the unlabelled target stream (not on the labelled test stream)."""
    images = target_images(digits_bench.test_stream[0])
    tgt = digits_bench.streams["target"][0].dataset
    assert len(images) == len(tgt)
    x, i = images[3]
    assert i == 3 and x.shape == (3, 16, 16)
    assert set(images.dataset.targets) == {UNLABELLED}


def test_config_checks():
    with pytest.raises(ValueError, match="same domain"):
        DomainAdaptationConfig(dataset="digits_shift", source="clean", target="clean")
    with pytest.raises(ValueError, match="domain-adaptation dataset 'office'"):
        DomainAdaptationConfig(dataset="office")
    with pytest.raises(ValueError, match="unknown domain"):
        catalogue.load("digits_shift", "domain_adaptation", domain="cartoon")


def _office(root, domains, classes=("Back_Pack", "bike")):
    for d in domains:
        for c in classes:
            for k in range(2):
                save_rgb(root / "office_home" / d / c / f"{k}.jpg")


def test_office_home_folder_layout(tmp_path):
    _office(tmp_path, ("art", "clipart"))
    cfg = DomainAdaptationConfig(dataset="office_home", source="art", target="clipart", root=str(tmp_path), img_size=8)
    b = build_domain_adaptation(cfg)
    assert b.info.classnames == ("back pack", "bike")
    assert list(b.streams["test"][0].dataset.targets) == [0, 0, 1, 1]
    assert tuple(b.streams["target"][0].dataset[0][0].shape) == (3, 8, 8)
    with pytest.raises(ValueError, match="unknown domain"):
        catalogue.load("office_home", "domain_adaptation", tmp_path, domain="sketch")
    with pytest.raises(FileNotFoundError, match="Office-Home"):
        catalogue.load("office_home", "domain_adaptation", tmp_path, domain="product")


def test_domainnet_split_lists(tmp_path):
    base = tmp_path / "domainnet"
    for d in ("clipart", "real"):
        for c in ("aircraft_carrier", "zebra"):
            save_rgb(base / d / c / "a.jpg")
            save_rgb(base / d / c / "b.jpg")
        (base / "splits").mkdir(exist_ok=True)
        (base / "splits" / f"{d}_train.txt").write_text(f"{d}/aircraft_carrier/a.jpg 0\n{d}/zebra/a.jpg 1\n")
        (base / "splits" / f"{d}_test.txt").write_text(f"{d}/zebra/b.jpg 1\n{d}/aircraft_carrier/b.jpg 0\n")
    splits = catalogue.load("domainnet", "domain_adaptation", tmp_path, domain="real")
    assert [(p.split("/")[-2], y, c) for p, y, c in splits["test"]] == [("zebra", 1, "zebra"),
                                                                       ("aircraft_carrier", 0, "aircraft carrier")]
    cfg = DomainAdaptationConfig(dataset="domainnet", source="clipart", target="real", root=str(tmp_path), img_size=8)
    b = build_domain_adaptation(cfg)
    assert len(b.streams["target"][0].dataset) == 2 and list(b.streams["test"][0].dataset.targets) == [1, 0]


def test_visda_image_lists(tmp_path):
    sub = tmp_path / "visda17" / "validation"
    save_rgb(sub / "car" / "x.jpg")
    (sub / "image_list.txt").write_text("car/x.jpg 3\n")
    (item,) = catalogue.load("visda17", "domain_adaptation", tmp_path, domain="real")["test"]
    assert item[1:] == (3, "car") and item[0].endswith("validation/car/x.jpg")
