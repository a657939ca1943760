"""Few-shot ImageNet and FGVC-Aircraft in CoOp's folder layouts, ImageNet-V2/-Sketch/-A/-R as test-only
domain-generalisation targets, and the base-to-new / cross-dataset / domain-generalisation configs.

Tiny synthetic folders in tmp_path, in the on-disk layouts of CoOp's DATASETS.md (KaiyangZhou/CoOp@ff61507).
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from ctta.scenarios.few_shot import FewShotConfig, build_few_shot, generate_fewshot
from PIL import Image

from ctta.data import catalogue
from ctta.data.catalogue import COOP_DATASETS
from ctta.data.classnames import classnames, imagenet_subset_wnids, imagenet_wnids

ROOT = Path(__file__).resolve().parents[1]
WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]  # the first four ImageNet classes
NAMES = ["tench", "goldfish", "great white shark", "tiger shark"]
DG = ("imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")
OTHERS = ("caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft", "sun397", "dtd",
          "eurosat", "ucf101")  # fmt: skip
METHODS = ("coop", "cocoop", "maple", "promptsrc", "pre", "coop_atp", "maple_atp")


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()


def _images(folder: Path, names) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(PNG)


def make_imagenet(root: Path, n_train=(5, 3, 6, 4), n_val=2, classnames_txt=True) -> Path:
    """``root/imagenet/images/{train,val}/<wnid>/`` (+ ``classnames.txt``), CoOp's layout."""
    base = root / "imagenet"
    for wnid, n in zip(WNIDS, n_train, strict=True):
        _images(base / "images" / "train" / wnid, [f"{wnid}_{i}.JPEG" for i in range(n)][::-1])
        _images(base / "images" / "val" / wnid, [f"val_{wnid}_{i}.JPEG" for i in range(n_val)])
    (base / "images" / "train" / WNIDS[0] / ".DS_Store").write_bytes(b"")  # hidden files are skipped
    if classnames_txt:
        (base / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in zip(WNIDS, NAMES, strict=True)))
    return base


def make_variants(root: Path) -> None:
    """ImageNet-V2/-Sketch/-A/-R with one image per class, in CoOp's folders (A and R: 200-class subsets)."""
    layouts = {
        "imagenetv2/imagenetv2-matched-frequency-format-val": [str(i) for i in range(1000)],
        "imagenet-sketch/images": imagenet_wnids(),
        "imagenet-adversarial/imagenet-a": imagenet_subset_wnids("imagenet_a"),
        "imagenet-rendition/imagenet-r": imagenet_subset_wnids("imagenet_r"),
    }
    for folder, classes in layouts.items():
        for c in classes:
            _images(root / folder / c, ["0.jpg"])


# ---------------------------------------------------------------------------------------------- ImageNet
def test_imagenet_reads_train_and_val_folders(tmp_path):
    base = make_imagenet(tmp_path)
    splits = catalogue.load("imagenet", "few_shot", tmp_path)
    assert splits["val"] == []  # ImageNet has no validation split; val is the test set
    assert len(splits["train"]) == 18 and len(splits["test"]) == 8
    first = splits["train"][0]
    assert first == (str(base / "images/train" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG"), 0, "tench")  # sorted names
    assert [it[1] for it in splits["test"]] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert {(it[1], it[2]) for it in splits["test"]} == set(enumerate(NAMES))


def test_imagenet_without_classnames_txt_uses_the_shipped_names(tmp_path):
    make_imagenet(tmp_path, classnames_txt=False)
    splits = catalogue.load("imagenet", "few_shot", tmp_path)
    assert [it[2] for it in splits["test"][::2]] == classnames("imagenet")[:4]


def test_imagenet_benchmark_draws_like_the_official_sampler(tmp_path):
    make_imagenet(tmp_path)
    splits = catalogue.load("imagenet", "few_shot", tmp_path)
    expected = generate_fewshot(splits["train"], 2, random.Random(3))  # no validation draw follows or precedes
    bench = build_few_shot(FewShotConfig(dataset="imagenet", root=str(tmp_path), shots=2, img_size=8), seed=3)
    base = [it for it in expected if it[1] < 2]
    train = bench.train_stream[0].dataset
    assert len(train) == len(base) == 4 and list(train.targets) == [it[1] for it in base]
    assert len(bench.valid_stream[0].dataset) == 0
    names = bench.info.stream_classnames
    assert list(names["test"]) == NAMES[:2] and list(names["test_new"]) == NAMES[2:]
    x, y = bench.test_new_stream[0].dataset[0][:2]
    assert tuple(x.shape) == (3, 8, 8) and y == 0


def test_imagenet_missing_or_inconsistent_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        catalogue.load("imagenet", "few_shot", tmp_path)
    assert COOP_DATASETS in str(err.value) and str(tmp_path / "imagenet") in str(err.value)
    base = make_imagenet(tmp_path)
    (base / "images" / "val" / WNIDS[3] / "val_n01491361_0.JPEG").unlink()
    (base / "images" / "val" / WNIDS[3] / "val_n01491361_1.JPEG").unlink()
    (base / "images" / "val" / WNIDS[3]).rmdir()
    with pytest.raises(ValueError, match="different class folders"):
        catalogue.load("imagenet", "few_shot", tmp_path)
    _images(base / "images" / "train" / "n99999999", ["x.JPEG"])
    with pytest.raises(ValueError, match="n99999999"):
        catalogue.load("imagenet", "few_shot", tmp_path)


# ---------------------------------------------------------------------------------------------- FGVC-Aircraft
def make_aircraft(root: Path) -> Path:
    base = root / "fgvc_aircraft"
    variants = ["707-320", "A300B4", "Cessna 172"]
    (base / "images").mkdir(parents=True)
    (base / "variants.txt").write_text("\n".join(variants) + "\n")
    for split, n in (("train", 3), ("val", 2), ("test", 1)):
        lines = [f"{split}{v[:2]}{i:03d} {v}" for v in variants for i in range(n)]
        (base / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    return base


def test_aircraft_reads_the_official_variant_lists(tmp_path):
    base = make_aircraft(tmp_path)
    for name in ("fgvc_aircraft", "aircraft"):  # CoOp's name is an alias
        splits = catalogue.load(name, "few_shot", tmp_path)
        assert [len(splits[s]) for s in ("train", "val", "test")] == [9, 6, 3]
        assert splits["test"][2] == (str(base / "images" / "testCe000.jpg"), 2, "Cessna 172")
    bench = build_few_shot(FewShotConfig(dataset="fgvc_aircraft", root=str(tmp_path), shots=2, img_size=8), seed=1)
    assert bench.info.stream_classnames["test"] == ("707-320", "A300B4")
    assert bench.info.stream_classnames["test_new"] == ("Cessna 172",)
    assert len(bench.train_stream[0].dataset) == 4 and len(bench.valid_stream[0].dataset) == 4


def test_aircraft_missing_list_says_where_to_get_it(tmp_path):
    base = make_aircraft(tmp_path)
    (base / "images_variant_val.txt").unlink()
    with pytest.raises(FileNotFoundError, match="images_variant_val.txt") as err:
        catalogue.load("fgvc_aircraft", "few_shot", tmp_path)
    assert COOP_DATASETS in str(err.value)
    (base / "images_variant_val.txt").write_text("valCe000 Boeing 999\n")
    with pytest.raises(ValueError, match="Boeing 999"):
        catalogue.load("fgvc_aircraft", "few_shot", tmp_path)


# ---------------------------------------------------------------------------------------------- domain generalisation
def test_imagenet_variants_are_test_only_targets(tmp_path):
    make_imagenet(tmp_path)
    make_variants(tmp_path)
    cfg = FewShotConfig(dataset="imagenet", root=str(tmp_path), shots=1, setting="all", img_size=8, eval_datasets=DG)
    bench = build_few_shot(cfg, seed=1)
    assert list(bench.streams) == ["train", "valid", "test", *(f"test_{d}" for d in DG)]
    assert list(bench.info.stream_classnames["train"]) == NAMES
    for name, n in zip(DG, (1000, 1000, 200, 200), strict=True):
        stream = getattr(bench, f"test_{name}_stream")
        assert list(bench.info.stream_classnames[f"test_{name}"]) == classnames(name) and len(classnames(name)) == n
        assert list(stream[0].dataset.targets) == list(range(n))
    split = catalogue.load("imagenet_v2", "few_shot", tmp_path)
    assert split["train"] == split["val"] == []
    assert split["test"][7][0].endswith("imagenetv2-matched-frequency-format-val/7/0.jpg")
    with pytest.raises(ValueError, match="eval_datasets"):
        build_few_shot(FewShotConfig(dataset="imagenet_a", root=str(tmp_path)), seed=1)


@pytest.mark.parametrize(("name", "coop_dir"), [("imagenet_a", "imagenet-adversarial/imagenet-a"),
                                                ("imagenet_sketch", "imagenet-sketch")])  # fmt: skip
def test_missing_variant_names_both_layouts(tmp_path, name, coop_dir):
    with pytest.raises(FileNotFoundError) as err:
        catalogue.load(name, "few_shot", tmp_path)
    assert coop_dir in str(err.value) and COOP_DATASETS in str(err.value)


# ---------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("method", METHODS)
def test_every_method_has_the_11_base_to_new_datasets_and_xd_dg(method):
    from ctta.runner.config import load_config, read_yaml

    b2n = set(read_yaml(ROOT / f"configs/fewshot/{method}_b2n.yaml")["_datasets_"])  # scenario.dataset=NAME
    assert b2n == {"imagenet", *OTHERS}
    for kind, targets in (("xd", OTHERS), ("dg", DG)):
        cfg = load_config(ROOT / f"configs/fewshot/{method}_{kind}.yaml")
        sc = cfg.scenario.params
        assert (sc.dataset, sc.setting, sc.shots, tuple(sc.eval_datasets)) == ("imagenet", "all", 16, targets)
        assert cfg.strategy.name == method and cfg.log.out_dir == f"runs/fewshot/{method}_{kind}_imagenet"
        assert all(catalogue.entry(d, "few_shot") for d in sc.eval_datasets)
    xd, dg = (load_config(ROOT / f"configs/fewshot/{method}_{k}.yaml").strategy.params for k in ("xd", "dg"))
    assert xd == dg  # the same ImageNet model is evaluated on both target sets


def test_imagenet_run_scores_cross_dataset_and_dg_targets(tmp_path):
    """End to end through the runner (tiny random CLIP): ImageNet source, all classes; an aircraft (cross-dataset)
    and ImageNet-A/-R (domain generalisation) stream, each scored with its own class names."""
    from ctta.runner.config import load_config
    from ctta.runner.run import run

    data = tmp_path / "data"
    make_imagenet(data)
    make_aircraft(data)
    for n in ("test70000", "testA3000", "testCe000"):
        (data / "fgvc_aircraft" / "images" / f"{n}.jpg").write_bytes(PNG)
    make_variants(data)
    overrides = [f"log.out_dir={tmp_path / 'run'}", "log.progress=false", "log.plot=false", "device=cpu",
                 "scenario.dataset=imagenet", f"scenario.root={data}", "scenario.setting=all", "scenario.shots=2",
                 "scenario.max_test=0", "scenario.eval_datasets=[fgvc_aircraft,imagenet_a,imagenet_r]",
                 "strategy.epochs=1"]  # fmt: skip
    results = run(load_config(ROOT / "configs/smoke/coop_digits.yaml", overrides), verbose=False)
    last = results["last_metrics"]
    for stream in ("test", "test_fgvc_aircraft", "test_imagenet_a", "test_imagenet_r"):
        assert 0.0 <= last[f"Top1_Acc_Stream/eval_phase/{stream}_stream"] <= 1.0
    assert "hm" not in results["summary"]  # all classes: no base/new split
