"""ProAPO's few-shot index files (MorningStarOvO/ProAPO@fefdf18 ``data/dataset/<ds>/fewshot_dataset/``) as the
few_shot scenario's train / validation sets (``scenario.fewshot_index``), on a hand-made tiny DTD split."""

import json

import pytest
from ctta.scenarios.few_shot import FewShotConfig, build_few_shot, read_fewshot_index, select_indexed

SPLIT = {  # CoOp's split_zhou_*.json layout: [relative path, label, class name]
    "train": [[f"{c}/{c}_{i:04d}.jpg", y, c] for y, c in enumerate(("banded", "blotchy", "braided")) for i in range(4)],
    "val": [[f"{c}/{c}_{i:04d}.jpg", y, c] for y, c in enumerate(("banded", "blotchy", "braided")) for i in (10, 11)],
    "test": [[f"{c}/{c}_{i:04d}.jpg", y, c] for y, c in enumerate(("banded", "blotchy", "braided")) for i in (20, 21)],
}
INDEX = {  # ProAPO's layout: {split: {path relative to the image folder: ProAPO's class name}}; file order kept
    "train": {"braided/braided_0002.jpg": "Braided", "banded/banded_0003.jpg": "Banded",
              "blotchy/blotchy_0000.jpg": "Blotchy", "banded/banded_0001.jpg": "Banded"},
    "val": {"blotchy/blotchy_0011.jpg": "Blotchy", "banded/banded_0010.jpg": "Banded",
            "braided/braided_0010.jpg": "Braided"},
}  # fmt: skip


def _dtd(tmp_path, index=INDEX, name="seed_1_num_shots_2.json"):
    """A DTD root (split file and the first image's file, probed; images are read lazily) and a ProAPO index folder
    holding ``name``."""
    (tmp_path / "dtd" / "images" / "banded").mkdir(parents=True)
    (tmp_path / "dtd" / "images" / "banded" / "banded_0000.jpg").write_bytes(b"")
    (tmp_path / "dtd" / "split_zhou_DescribableTextures.json").write_text(json.dumps(SPLIT))
    folder = tmp_path / "fewshot_dataset"
    folder.mkdir()
    (folder / name).write_text(json.dumps(index))
    return FewShotConfig(dataset="dtd", root=str(tmp_path), shots=2, setting="all", fewshot_index=str(folder))


def _items(bench, stream):
    """The ``(image, label, classname)`` items under a stream's Avalanche dataset."""
    ds = getattr(bench, f"{stream}_stream")[0].dataset
    while not hasattr(ds, "items"):
        ds = ds._datasets[0]
    return list(ds.items)


def test_index_picks_the_listed_items_in_file_order(tmp_path):
    bench = build_few_shot(_dtd(tmp_path), seed=1)
    images = tmp_path / "dtd" / "images"
    train = [(p.replace(str(images) + "/", ""), y, c) for p, y, c in _items(bench, "train")]
    assert train == [("braided/braided_0002.jpg", 2, "braided"), ("banded/banded_0003.jpg", 0, "banded"),
                     ("blotchy/blotchy_0000.jpg", 1, "blotchy"), ("banded/banded_0001.jpg", 0, "banded")]  # fmt: skip
    val = [(p.replace(str(images) + "/", ""), y) for p, y, _ in _items(bench, "valid")]
    assert val == [("blotchy/blotchy_0011.jpg", 1), ("banded/banded_0010.jpg", 0), ("braided/braided_0010.jpg", 2)]
    assert list(bench.train_stream[0].dataset.targets) == [2, 0, 1, 0]
    assert list(bench.info.classnames) == ["banded", "blotchy", "braided"]  # the split's names, not ProAPO's
    assert len(_items(bench, "test")) == 6


def test_index_file_path_and_base_to_new(tmp_path):
    cfg = _dtd(tmp_path, name="any.json")
    cfg = FewShotConfig(**{**cfg.__dict__, "fewshot_index": cfg.fewshot_index + "/any.json", "setting": "base2new"})
    bench = build_few_shot(cfg, seed=3)  # a file: seed and shots do not pick it
    assert [y for _, y, _ in _items(bench, "train")] == [0, 1, 0]  # base = banded, blotchy (relabelled 0, 1)
    assert [y for _, y, _ in _items(bench, "test_new")] == [0, 0]


def test_index_without_val_draws_the_validation_set(tmp_path):
    bench = build_few_shot(_dtd(tmp_path, index={"train": INDEX["train"]}), seed=1)
    valid = _items(bench, "valid")
    assert len(valid) == 6 and sorted({y for _, y, _ in valid}) == [0, 1, 2]  # min(shots, 4) = 2 per class drawn


def test_missing_index_names_where_proapo_keeps_it(tmp_path):
    cfg = _dtd(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"seed_2_num_shots_2\.json.*fewshot_dataset/seed_<seed>_num_shots"):
        build_few_shot(cfg, seed=2)


def test_entries_not_in_the_split_are_listed_in_one_error(tmp_path):
    index = {"train": {**INDEX["train"], "banded/banded_0010.jpg": "Banded", "gauzy/gauzy_0001.jpg": "Gauzy"}}
    with pytest.raises(ValueError, match=r"2 of 6 train entries not found.*banded/banded_0010\.jpg, gauzy/gauzy_0001"):
        build_few_shot(_dtd(tmp_path, index=index), seed=1)  # banded_0010 is a val image, gauzy no class


def test_ambiguous_and_inconsistent_entries(tmp_path):
    items = [("/r/a/x.jpg", 0, "a"), ("/r/b/x.jpg", 1, "b"), ("/r/b/y.jpg", 1, "b")]
    with pytest.raises(ValueError, match=r"1 match several images\): x\.jpg"):
        select_indexed(items, [("x.jpg", "a")])
    with pytest.raises(ValueError, match="class names mapping to several labels"):
        select_indexed(items, [("a/x.jpg", "same"), ("b/y.jpg", "same")])
    assert select_indexed(items, [("b\\y.jpg", "b"), ("r/a/x.jpg", "a")]) == [items[2], items[0]]


def test_read_index_rejects_other_json(tmp_path):
    (tmp_path / "split.json").write_text(json.dumps(SPLIT))
    with pytest.raises(ValueError, match="not a ProAPO few-shot index"):
        read_fewshot_index(tmp_path / "split.json", 1, 1)


def test_bundled_digits_cannot_be_indexed(tmp_path):
    (tmp_path / "i.json").write_text(json.dumps({"train": {"0.png": "0"}}))
    cfg = FewShotConfig(dataset="digits", shots=2, img_size=8, fewshot_index=str(tmp_path / "i.json"))
    with pytest.raises(ValueError, match="1 of 1 train entries not found"):
        build_few_shot(cfg, seed=1)


@pytest.mark.parametrize("kind", ["proapo", "proapo_ato"])
def test_proapo_configs_read_the_index_folders(kind):
    from pathlib import Path

    from ctta.runner.config import load_config

    path = Path(__file__).resolve().parents[1] / "configs" / "fewshot" / f"{kind}.yaml"
    for ds, folder in (("cars", "stanford_cars"), ("eurosat", "euro_sat"), ("flower102", "flo")):
        scenario = load_config(path, [f"scenario.dataset={ds}"]).scenario.params
        assert scenario.fewshot_index == f"data/proapo/{folder}/fewshot_dataset"
