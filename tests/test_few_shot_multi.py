"""The multi-dataset few-shot scenario (scenarios/few_shot_multi.py): disjoint global label space, per-dataset
sampling identical to the single-dataset protocol, per-dataset test streams in both label spaces, and a multitask
run that reports every dataset's accuracy."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from ctta.scenarios.few_shot import CLIP_MEAN, CLIP_STD, generate_fewshot
from ctta.scenarios.few_shot_multi import FewShotMultiConfig, build_few_shot_multi, load_splits, offset_items

from ctta.templates.benchmark_info import stream_classnames

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("digits/0/3", "digits/1/3", "digits/2/3")  # 4 + 3 + 3 classes


def _bench(**kw):
    cfg = dict(datasets=PARTS, shots=3, img_size=16, max_test=12)
    return build_few_shot_multi(FewShotMultiConfig(**{**cfg, **kw}), seed=2)


def _targets(stream) -> list[int]:
    return [int(t) for t in stream[0].dataset.targets]


def test_offset_items_closed_form():
    assert offset_items([("a", 0, "x"), ("b", 2, "y", 7)], 5) == [("a", 5, "x"), ("b", 7, "y", 7)]


def test_global_label_space_is_the_disjoint_union():
    bench = _bench()
    info = bench.info
    assert info.task_classes == ((0, 1, 2, 3), (4, 5, 6), (7, 8, 9)) and info.dataset_names == PARTS
    assert info.n_classes == 10 and info.classnames == tuple(n for names in info.experience_classnames for n in names)
    assert info.experience_classnames[1] == ("four", "five", "six")
    train = _targets(bench.train_stream)
    assert sorted(set(train)) == list(range(10)) and len(train) == 30  # 3 shots x 10 classes
    assert sorted(set(_targets(bench.streams["valid"]))) == list(range(10))
    assert set(bench.streams) == {"train", "valid", "test", "test_digits_0_3", "test_digits_1_3", "test_digits_2_3"}


def test_each_dataset_is_sampled_as_its_single_dataset_run():
    from torchvision.transforms import Normalize

    norm = Normalize(CLIP_MEAN, CLIP_STD)
    items = _bench().train_stream[0].dataset
    offset = 0
    for name in PARTS:
        splits, _ = load_splits(name, "data", 16)
        want = generate_fewshot(splits["train"], 3, random.Random(2))  # the same seed, a stream of its own
        n_classes = len({int(w[1]) for w in want})
        got = [items[i] for i in range(len(items)) if offset <= int(items[i][1]) < offset + n_classes]
        assert [int(y) for _, y, *_ in got] == [int(w[1]) + offset for w in want]
        for (x, *_), w in zip(got, want):
            torch.testing.assert_close(x, norm(w[0]))
        offset += n_classes


def test_per_dataset_streams_union_and_dataset_label_spaces():
    union = _bench()
    assert _targets(union.streams["test_digits_1_3"]) and set(_targets(union.streams["test_digits_1_3"])) <= {4, 5, 6}
    assert union.info.stream_classnames == {}  # every stream is scored over the union's classes
    local = _bench(eval_label_space="dataset")
    assert set(_targets(local.streams["test_digits_1_3"])) <= {0, 1, 2}
    exp = local.streams["test_digits_2_3"][0]
    assert stream_classnames(exp) == ["seven", "eight", "nine"]
    assert stream_classnames(local.streams["test"][0]) == list(local.info.classnames)  # the union stays global
    assert set(_targets(local.streams["test"])) <= set(range(10))


def test_bad_settings_raise(tmp_path):
    with pytest.raises(ValueError, match="eval_label_space"):
        _bench(eval_label_space="both")
    with pytest.raises(ValueError, match="distinct"):
        _bench(datasets=("digits/0/3", "digits/0/3"))
    rows = [["a.jpg", 0, "cat"], ["b.jpg", 1, "dog"]]  # a split file and empty image files (read lazily)
    (tmp_path / "oxford_pets").mkdir()
    (tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json").write_text(
        json.dumps({"train": rows, "val": rows, "test": rows})
    )
    (tmp_path / "oxford_pets" / "images").mkdir()
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / "oxford_pets" / "images" / name).write_bytes(b"")  # never opened
    with pytest.raises(ValueError, match="cannot be mixed"):
        _bench(datasets=("digits/0/3", "oxford_pets"), root=str(tmp_path))


def test_multitask_run_reports_every_dataset(tmp_path):
    from ctta.runner.config import load_config
    from ctta.runner.run import run

    cfg = load_config(ROOT / "configs" / "smoke" / "mvlpt_digits.yaml",
                      [f"log.out_dir={tmp_path}", "log.plot=false", "device=cpu"])  # fmt: skip
    result = run(cfg, verbose=False)
    last = result["last_metrics"]
    for name in ("test_digits_0_2", "test_digits_1_2", "test"):
        assert 0 <= last[f"Top1_Acc_Stream/eval_phase/{name}_stream"] <= 1
    summary = result["summary"]
    per = [summary[f"acc_test_digits_{k}_2"] for k in (0, 1)]  # DatasetAccuracy: per dataset and their mean
    for k, acc in zip((0, 1), per):
        assert acc == pytest.approx(last[f"Top1_Acc_Stream/eval_phase/test_digits_{k}_2_stream"])
    assert summary["mean_dataset_acc"] == pytest.approx(sum(per) / 2) and "top1" in summary
