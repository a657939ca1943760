"""Class-incremental builder: never drops classes (unlike Avalanche's num_experiences split), native order."""

from __future__ import annotations

import pytest
import torch
from ctta.scenarios.class_incremental import ClassIncrementalConfig, split_classes

from ctta.registry import SCENARIOS
from ctta.runner.config import load_config


def test_split_never_drops_classes_when_not_divisible():
    groups = split_classes(7, n_experiences=3, shuffle=False)
    assert groups == [[0, 1, 2], [3, 4], [5, 6]]
    groups = split_classes(100, n_experiences=7, seed=3)
    assert sorted(c for g in groups for c in g) == list(range(100))
    assert {len(g) for g in groups} == {14, 15}


def test_split_explicit_sizes_order_and_errors():
    assert split_classes(5, classes_per_exp=[1, 4], class_order=[4, 3, 2, 1, 0]) == [[4], [3, 2, 1, 0]]
    with pytest.raises(ValueError, match="sum to 5"):
        split_classes(5, classes_per_exp=[1, 1])
    with pytest.raises(ValueError, match="permutation"):
        split_classes(3, 1, class_order=[0, 0, 1])
    with pytest.raises(ValueError, match=r"n_experiences must be in \[1, 3\]"):
        split_classes(3, 4)


def test_shuffle_uses_private_generator():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    split_classes(10, 2, seed=5)
    assert torch.equal(torch.rand(1), before)  # global RNG untouched


def test_digits_benchmark_covers_every_sample_in_native_order():
    bench = SCENARIOS.get("class_incremental").builder(ClassIncrementalConfig(n_experiences=3), seed=1)
    assert bench.info.n_classes == 10 and len(bench.info.classnames) == 10
    train = list(bench.train_stream)
    assert len(train) == 3
    total = sum(len(e.dataset) for e in train)
    assert total == 1347  # every digits training image, once
    seen = set()
    for e, g in zip(train, bench.info.task_classes):
        ys = list(e.dataset.targets)
        assert set(ys) == set(g) == e.classes_in_this_experience
        seen |= set(ys)
    assert seen == set(range(10))


def test_unknown_dataset_lists_valid_ones():
    with pytest.raises(KeyError, match="unknown dataset 'nope'; valid datasets: .*'digits'"):
        SCENARIOS.get("class_incremental").builder(ClassIncrementalConfig(dataset="nope"), seed=1)


def test_missing_folder_dataset_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="Expected <root>/train/<class>"):
        SCENARIOS.get("class_incremental").builder(ClassIncrementalConfig(dataset="folder", root=str(tmp_path)), seed=1)


def test_bad_config_key():
    from ctta.runner.config import ConfigError

    with pytest.raises(ConfigError, match="valid keys"):
        load_config(
            {
                "scenario": {"name": "class_incremental", "n_exp": 2},
                "backbone": {"name": "vit"},
                "strategy": {"name": "vpt"},
            }
        )
