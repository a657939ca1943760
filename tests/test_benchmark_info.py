"""The typed benchmark record (``ctta.templates.benchmark_info.BenchmarkInfo``, issue 19): what it holds, that every
scenario attaches it and nothing else, that a plain Avalanche benchmark yields an inferred one (and is left
untouched), and that no code reads scenario annotations off a benchmark any more."""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest
from avalanche.benchmarks import nc_benchmark
from avalanche.benchmarks.scenarios import CLScenario, benchmark_from_datasets, class_incremental_benchmark

from ctta.data.avl import as_avl_dataset
from ctta.registry import SCENARIOS
from ctta.templates.benchmark_info import (
    BenchmarkInfo,
    attached_info,
    benchmark_info,
    infer_classnames,
    infer_num_classes,
    infer_test_dataset,
    origin_info,
    with_info,
)

ROOT = Path(__file__).resolve().parents[1]
FIELDS = {f.name for f in dataclasses.fields(BenchmarkInfo)}
RETIRED = {"class_groups", "dataset_classes", "dataset_classnames", "task_sizes"}  # old annotate() names


# ---------------------------------------------------------------------------------------------- the record
def test_every_field_is_typed_and_documented():
    hints = typing.get_type_hints(BenchmarkInfo)
    doc = BenchmarkInfo.__doc__
    for f in dataclasses.fields(BenchmarkInfo):
        assert hints[f.name] is not typing.Any or f.name in {"test_dataset", "train_dataset", "dataset_stats"}
        assert f"        {f.name}: " in doc, f"{f.name} is not documented in BenchmarkInfo's Attributes"
    assert dataclasses.fields(BenchmarkInfo)[0].name == "n_classes"
    assert all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
               for f in dataclasses.fields(BenchmarkInfo)[1:])  # fmt: skip


def test_record_is_frozen_and_stores_tuples():
    names, tasks = ["a", "b", "c"], [[0, 1], [2]]
    info = BenchmarkInfo(n_classes=3, classnames=names, task_classes=tasks, task_indices=[[5, 3], []],
                         stream_classnames={"test": ["a"]}, normalization=([0.5] * 3, [0.25] * 3))  # fmt: skip
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.n_classes = 4
    names.append("d")
    tasks[0].append(9)  # the caller's lists are copied
    assert info.classnames == ("a", "b", "c") and info.task_classes == ((0, 1), (2,))
    assert info.stream_classnames == {"test": ("a",)} and info.normalization == ((0.5,) * 3, (0.25,) * 3)
    assert info.task_sizes == (2, 0) and BenchmarkInfo(n_classes=2).task_sizes is None
    assert info.names_of_stream("test") == ("a",) and info.names_of_stream("test_new") == info.classnames


def test_record_validates_its_class_information():
    with pytest.raises(ValueError, match="n_classes must be positive"):
        BenchmarkInfo(n_classes=0)
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        BenchmarkInfo(n_classes=3, classnames=["a", "b"])
    with pytest.raises(TypeError, match="BenchmarkInfo"):
        with_info(CLScenario([]), {"n_classes": 3})


# ---------------------------------------------------------------------------------------------- scenarios
SCENARIO_CASES = {
    "class_incremental": {"dataset": "digits", "n_experiences": 2},
    "domain_adaptation": {"dataset": "digits_shift", "source": "clean", "target": "pixelate", "img_size": 16,
                          "max_items": 20},
    "few_shot": {"dataset": "digits", "shots": 1, "img_size": 16},
    "few_shot_multi": {"datasets": ("digits/0/2", "digits/1/2"), "shots": 1, "img_size": 16, "max_test": 4},
    "multilabel": {"dataset": "synthetic", "increment": 4, "img_size": 8, "synthetic_train": 24, "synthetic_test": 12},
    "multilane_cil": {"dataset": "digits", "n_experiences": 2, "img_size": 8},
    "ood": {"dataset": "digits", "shots": 1, "id_classes": 5, "held_out_near": True, "near": [], "far": ["noise"],
            "img_size": 16, "max_test": 6},
    "retrieval": {"dataset": "digits", "img_size": 8},
    "si_blurry": {"dataset": "digits", "img_size": 8, "n_tasks": 2},
    "test_time": {"dataset": "digits", "n_views": 2, "resolution": 16, "max_samples": 2},
    "transfer": {"datasets": ("digits/0/2", "digits/1/2"), "img_size": 8, "max_per_split": 4},
}


def _plain_attributes(bench) -> set[str]:
    """What Avalanche itself sets on a ``CLScenario``: ``_streams`` and one ``<name>_stream`` per stream."""
    return {"_streams", *(f"{s}_stream" for s in bench.streams)}


def test_every_registered_scenario_has_a_case():
    assert set(SCENARIOS) == set(SCENARIO_CASES)


@pytest.mark.parametrize("name", sorted(SCENARIO_CASES))
def test_every_scenario_attaches_the_record_and_nothing_else(name):
    entry = SCENARIOS.get(name)
    bench = entry.builder(entry.config(**SCENARIO_CASES[name]), seed=1)
    info = attached_info(bench)
    assert isinstance(info, BenchmarkInfo) and benchmark_info(bench) is info
    assert set(vars(bench)) - _plain_attributes(bench) == {"info"}
    if name == "few_shot":  # its streams reference the benchmark, so experiences reach the record
        exp = bench.test_stream[0]
        assert origin_info(exp) is info and infer_test_dataset(exp) is info.test_dataset
        assert infer_num_classes(exp) == info.n_classes


# ---------------------------------------------------------------------------------------------- plain benchmarks
@pytest.fixture
def plain_bench(digits):
    train, test = digits
    tr, te = as_avl_dataset(train), as_avl_dataset(test)
    return class_incremental_benchmark({"train": tr, "test": te}, num_experiences=2), te


def test_plain_avalanche_benchmark_yields_the_inferred_record(plain_bench):
    bench, te = plain_bench
    before = dict(vars(bench))
    info = benchmark_info(bench)
    assert info.n_classes == 10 and info.classnames is None and len(info.test_dataset) == len(te)
    assert sorted(set(info.test_dataset.targets)) == list(range(10))
    assert attached_info(bench) is None and vars(bench) == before  # nothing set on the user's benchmark
    exp = bench.train_stream[0]
    assert origin_info(exp) is None and infer_num_classes(exp) == 10 and infer_classnames(exp) is None


def test_plain_benchmark_counts_the_classes_of_every_experience(digits):
    train, test = digits
    tr, te = as_avl_dataset(train), as_avl_dataset(test)
    low = [i for i, y in enumerate(train.targets) if y < 5]
    high = [i for i, y in enumerate(train.targets) if y >= 5]
    bench = benchmark_from_datasets(train=[tr.subset(low), tr.subset(high)], test=[te.subset(range(20))])
    assert max(bench.train_stream[0].dataset.targets) == 4  # the first experience alone would say 5
    assert benchmark_info(bench).n_classes == 10


def test_legacy_benchmark_yields_its_own_class_count(digits):
    train, test = digits
    bench = nc_benchmark(train, test, n_experiences=2, task_labels=False, seed=0)
    info = benchmark_info(bench)
    assert info.n_classes == bench.n_classes == 10 and attached_info(bench) is None
    assert not hasattr(bench, "info")


def test_attached_record_wins_over_inference(plain_bench):
    bench, te = plain_bench
    copy = benchmark_from_datasets(train=[bench.train_stream[0].dataset], test=[te])
    record = BenchmarkInfo(n_classes=12, classnames=[f"c{i}" for i in range(12)])
    with_info(copy, record)
    for stream in copy.streams.values():
        stream.benchmark = copy  # how an experience reaches its benchmark (few_shot does the same)
    exp = copy.train_stream[0]
    assert benchmark_info(copy) is record and infer_num_classes(exp) == 12
    assert infer_classnames(exp) == [f"c{i}" for i in range(12)]
    assert len(infer_test_dataset(exp)) == len(te)  # no test_dataset in the record: the test stream


# ---------------------------------------------------------------------------------------------- no untyped reads
def _bench_like(node: ast.AST) -> bool:
    """An expression naming a benchmark: ``bench``, ``benchmark``, ``ctx.bench``, ``origin_benchmark(exp)``,
    ``getattr(stream, "benchmark", None)``."""
    if isinstance(node, ast.Name):
        return "bench" in node.id
    if isinstance(node, ast.Attribute):
        return "bench" in node.attr
    if isinstance(node, ast.Call):
        func = ast.unparse(node.func)
        if func == "getattr":  # getattr(stream, "benchmark", None)
            return len(node.args) > 1 and "bench" in ast.unparse(node.args[1])
        return "benchmark" in func and "info" not in func  # origin_benchmark(exp)
    return False


def untyped_reads(source: str, path: str = "<string>") -> list[str]:
    """``getattr/_attr/hasattr(<benchmark>, "<annotation>", ...)`` calls and ``<benchmark>.<annotation>`` reads."""
    names, found = (FIELDS | RETIRED) - {"info"}, []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in {"getattr", "_attr", "hasattr"}:
            args = node.args
            if len(args) >= 2 and isinstance(args[1], ast.Constant) and args[1].value in names:
                if _bench_like(args[0]):
                    found.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Attribute) and node.attr in names and _bench_like(node.value):
            found.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_scanner_sees_the_old_reads():
    old = """
getattr(benchmark, "n_classes", None)
_attr(origin_benchmark(exp), "stream_classnames")
getattr(getattr(stream, "benchmark", None), "stream_classnames", None)
bench.task_indices
ctx.bench.n_classes
bench.n_classes = 3
"""
    assert len(untyped_reads(old)) == 6
    new = """
benchmark_info(benchmark).n_classes
origin_info(exp).stream_classnames
bench.info.task_indices
ctx.bench.info.n_classes
getattr(cfg, "batch_size", None)
_attr(exp, "classnames")
"""
    assert untyped_reads(new) == []


# Avalanche's own typed attribute: ``ClassificationScenario.n_classes`` of the legacy generators, read after an
# isinstance check (``_legacy_n_classes``), not a scenario annotation.
ALLOWED = {("ctta/templates/benchmark_info.py", "bench.n_classes")}


def test_no_code_reads_annotations_off_a_benchmark():
    found = []
    for folder in ("ctta", "strategies", "scenarios"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            found += [r for r in untyped_reads(path.read_text(), rel) if (rel, r.split(": ", 1)[1]) not in ALLOWED]
    assert found == [], "read the benchmark's record (benchmark_info / origin_info) instead:\n" + "\n".join(found)
