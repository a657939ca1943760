"""Few-shot protocol: the official sampler's selection, base-to-new subsampling, split files, an end-to-end
base-to-new run writing base / new / HM."""

from __future__ import annotations

import json
import random
from collections import defaultdict

import pytest
from ctta.scenarios.few_shot import FewShotConfig, build_few_shot, generate_fewshot, read_split, subsample_classes


def _official(data_sources, num_shots, seed):
    """The official algorithm, written out: seed Python's global ``random``; per source, group by label (dict
    insertion order), ``random.sample`` per label, fewer kept whole."""
    random.seed(seed)
    outs = []
    for items, k in data_sources:
        tracker = defaultdict(list)
        for it in items:
            tracker[it[1]].append(it)
        out = []
        for _, group in tracker.items():
            out.extend(random.sample(group, k) if len(group) >= k else group)
        outs.append(out)
    return outs


def _synthetic(n, n_classes, seed):
    r = random.Random(seed)
    labels = [r.randrange(n_classes) for _ in range(n)]
    return [(f"img_{i}.jpg", y, f"class{y}") for i, y in enumerate(labels)]


@pytest.mark.parametrize("shots", [1, 4, 16])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sampler_matches_official_algorithm(shots, seed):
    train, val = _synthetic(500, 23, 0), _synthetic(120, 23, 1)  # some classes have fewer than 16 items
    want_train, want_val = _official([(train, shots), (val, min(shots, 4))], shots, seed)
    rng = random.Random(seed)
    assert generate_fewshot(train, shots, rng) == want_train
    assert generate_fewshot(val, min(shots, 4), rng) == want_val  # same stream, right after train


def test_subsample_base_new_sorted_halves():
    items = [(f"{i}", y, f"c{y}") for i, y in enumerate([4, 0, 2, 6, 1, 3, 5])]  # 7 labels -> 4 base, 3 new
    (base,) = subsample_classes(items, subsample="base")
    (new,) = subsample_classes(items, subsample="new")
    assert sorted({c for _, _, c in base}) == ["c0", "c1", "c2", "c3"]
    assert sorted({c for _, _, c in new}) == ["c4", "c5", "c6"]
    assert {(c, y) for _, y, c in base} == {("c0", 0), ("c1", 1), ("c2", 2), ("c3", 3)}
    assert {(c, y) for _, y, c in new} == {("c4", 0), ("c5", 1), ("c6", 2)}
    test = [("t", 6, "c6"), ("u", 0, "c0")]
    _, test_new = subsample_classes(items, test, subsample="new")
    assert test_new == [("t", 2, "c6")]


def test_read_split(tmp_path):
    data = {s: [["a/1.jpg", 0, "cat"], ["b/2.jpg", 1, "dog"]] for s in ("train", "val", "test")}
    (tmp_path / "split.json").write_text(json.dumps(data))
    out = read_split(tmp_path / "split.json", tmp_path / "images")
    assert out["train"][1] == (str(tmp_path / "images" / "b/2.jpg"), 1, "dog")
    with pytest.raises(FileNotFoundError, match="DATASETS.md"):
        read_split(tmp_path / "missing.json", tmp_path)


def test_missing_dataset_names_the_split_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="split_zhou_OxfordPets.json"):
        build_few_shot(FewShotConfig(dataset="oxford_pets", root=str(tmp_path)), seed=1)


def test_digits_benchmark_streams():
    bench = build_few_shot(FewShotConfig(dataset="digits", shots=3, img_size=32), seed=2)
    assert len(bench.train_stream[0].dataset) == 15  # 3 shots x 5 base classes
    names = bench.info.stream_classnames
    assert names["test"] == ("zero", "one", "two", "three", "four")
    assert names["test_new"] == ("five", "six", "seven", "eight", "nine")
    assert set(bench.test_new_stream[0].dataset.targets) == set(range(5))
    assert bench.test_new_stream[0].origin_stream.name == "test_new"
    from ctta.clip_prompting.template import stream_classnames

    assert stream_classnames(bench.test_new_stream[0]) == list(names["test_new"])
    assert stream_classnames(bench.train_stream[0]) == list(names["train"])
    everything = build_few_shot(FewShotConfig(dataset="digits", shots=2, img_size=32, setting="all"), seed=2)
    assert len(everything.train_stream[0].dataset) == 20 and not hasattr(everything, "test_new_stream")


class _HeadNames:
    """Plugin recording the text head's class names at each evaluated stream."""

    def __init__(self):
        self.seen = {}

    def __getattr__(self, name):
        if name.startswith(("before_", "after_")):
            return lambda strategy, **kw: None
        raise AttributeError(name)

    def after_eval_exp(self, strategy, **kw):
        self.seen[strategy.experience.origin_stream.name] = list(strategy.model.classnames)


def test_base_to_new_run_writes_base_new_hm(tmp_path):
    from ctta.runner.config import load_config
    from ctta.runner.run import execute, prepare

    cfg = load_config("configs/smoke/coop_digits.yaml", [f"log.out_dir={tmp_path}", "log.progress=false", "device=cpu"])
    ctx = prepare(cfg)
    heads = _HeadNames()
    ctx.strategy.plugins.append(heads)
    results = execute(ctx, verbose=False)
    assert heads.seen == {
        "test": ["zero", "one", "two", "three", "four"],
        "test_new": ["five", "six", "seven", "eight", "nine"],
    }
    s = json.loads((tmp_path / "results.json").read_text())["summary"]
    assert set(s) >= {"base_acc", "new_acc", "hm"}
    assert s["hm"] == pytest.approx(2 * s["base_acc"] * s["new_acc"] / (s["base_acc"] + s["new_acc"]))
    last = results["last_metrics"]
    assert last["Top1_Acc_HM/eval_phase/test_new_stream"] == pytest.approx(s["hm"])
    assert s["base_acc"] == pytest.approx(last["Top1_Acc_Stream/eval_phase/test_stream"])
    assert s["new_acc"] == pytest.approx(last["Top1_Acc_Stream/eval_phase/test_new_stream"])


def test_eval_datasets_add_test_streams_with_their_classes(tmp_path):
    from ctta.runner.config import load_config
    from ctta.runner.run import run

    bench = build_few_shot(FewShotConfig(dataset="digits", shots=2, img_size=32, eval_datasets=("digits",)), seed=1)
    assert list(bench.streams) == ["train", "valid", "test", "test_new", "test_digits"]
    assert len(bench.info.stream_classnames["test_digits"]) == 10
    overrides = [f"log.out_dir={tmp_path}", "log.progress=false", "device=cpu", "scenario.eval_datasets=[digits]"]
    results = run(load_config("configs/smoke/coop_digits.yaml", overrides), verbose=False)
    assert 0.0 <= results["last_metrics"]["Top1_Acc_Stream/eval_phase/test_digits_stream"] <= 1.0
    assert {"base_acc", "new_acc", "hm"} <= set(results["summary"])
