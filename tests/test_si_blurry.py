"""Si-Blurry stream generator (spec si-blurry-mvp §2.5 test vector) and the Avalanche benchmark builder."""

from __future__ import annotations

import warnings

import pytest
import torch
from ctta.scenarios.si_blurry import SiBlurryConfig, si_blurry_benchmark, si_blurry_split
from torch.utils.data import TensorDataset

# spec §2.5: seed 1, N=50, M=10, T=5, class-blocked targets with 500 images per class
VECTORS = {
    100: dict(
        perm10=[45, 15, 90, 32, 35, 63, 17, 72, 79, 96],
        s=[0, 3, 3, 23, 37, 50],
        b=[0, 10, 16, 16, 46, 50],
        k=[0, 50, 383, 647, 2175, 2500],
        q=[50, 333, 264, 1528, 325],
        disjoint=[3, 0, 20, 14, 13],
        blurry=[10, 6, 0, 30, 4],
        sizes=[6500, 3000, 10264, 22000, 8236],
        new=[19, 5, 20, 40, 16],
    ),
    200: dict(
        perm10=[45, 130, 128, 38, 91, 123, 149, 96, 151, 80],
        s=[0, 14, 28, 72, 86, 100],
        b=[0, 25, 37, 45, 46, 100],
        k=[0, 85, 1316, 1866, 3737, 5000],
        q=[85, 1231, 550, 1871, 1263],
        disjoint=[14, 14, 44, 14, 14],
        blurry=[25, 12, 8, 1, 54],
        sizes=[19500, 13000, 26000, 8763, 32737],
        new=[48, 23, 50, 14, 65],
    ),
}


def blocked(n_classes: int, per_class: int) -> list[int]:
    return [c for c in range(n_classes) for _ in range(per_class)]


def new_classes_per_task(tasks, targets):
    seen, out = set(), []
    for t in tasks:
        cls = {targets[i] for i in t}
        out.append(len(cls - seen))
        seen |= cls
    return out


@pytest.mark.parametrize("n_classes", [100, 200])
def test_seed1_test_vector(n_classes):
    v = VECTORS[n_classes]
    targets = blocked(n_classes, 500)
    tasks, info = si_blurry_split(targets, n_tasks=5, disjoint_pct=50, blurry_pct=10, seed=1, return_info=True)
    assert info["perm"][:10] == v["perm10"]
    assert info["s"] == v["s"] and info["b"] == v["b"]
    assert info["k"] == v["k"] and info["k"][-1] == n_classes * 250 // 10  # K = S_b * M / 100
    assert info["q"] == v["q"]
    assert [len(c) for c in info["disjoint_classes"]] == v["disjoint"]
    assert [len(c) for c in info["blurry_classes"]] == v["blurry"]
    assert [len(t) for t in tasks] == v["sizes"]
    assert new_classes_per_task(tasks, targets) == v["new"]
    flat = [i for t in tasks for i in t]
    assert sorted(flat) == list(range(len(targets)))  # every index exactly once


def test_every_index_once_on_interleaved_order_and_deterministic():
    g = torch.Generator().manual_seed(3)
    targets = torch.randint(0, 20, (900,), generator=g).tolist()  # CIFAR-like interleaved native order
    tasks = si_blurry_split(targets, n_tasks=4, seed=7)
    assert sorted(i for t in tasks for i in t) == list(range(900))
    assert sum(len(t) for t in tasks) == len(targets)
    assert tasks == si_blurry_split(targets, n_tasks=4, seed=7)
    assert tasks != si_blurry_split(targets, n_tasks=4, seed=8)


def test_donations_come_from_the_native_order_head_of_each_task():
    targets = blocked(100, 500)
    tasks, info = si_blurry_split(targets, return_info=True)
    # task 2 owns no blurry class (b[2] == b[3]) yet receives q_2 = 264 blurred samples of other tasks' classes
    own = set(info["disjoint_classes"][2])
    foreign = [i for i in tasks[2] if targets[i] not in own]
    assert len(foreign) == 264


def test_global_rng_untouched():
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    si_blurry_split(blocked(10, 20), n_tasks=2, seed=5)
    assert torch.equal(torch.rand(3), before)


def test_empty_tasks():
    targets = blocked(6, 10)
    with pytest.warns(UserWarning, match="2 of 6 classes are unused"):
        tasks = si_blurry_split(targets, n_tasks=4, disjoint_pct=0, blurry_pct=0, seed=0)
    assert [len(t) for t in tasks] == [30, 0, 0, 10]
    tasks = si_blurry_split(targets, n_tasks=3, disjoint_pct=50, blurry_pct=10, seed=6)
    assert len(tasks[0]) == 0 and sorted(i for t in tasks for i in t) == list(range(60))


def test_unused_classes_warning_and_skip():
    targets = blocked(10, 7)  # C=10, N=50, T=3: D=3, Bc=6, one class unused
    with pytest.warns(UserWarning, match="1 of 10 classes are unused"):
        tasks, info = si_blurry_split(targets, n_tasks=3, return_info=True)
    unused = set(range(10)) - {c for cl in info["disjoint_classes"] + info["blurry_classes"] for c in cl}
    assert len(unused) == 1
    flat = [i for t in tasks for i in t]
    assert sorted(flat) == [i for i, y in enumerate(targets) if y not in unused]


def test_fixed_branch():
    targets = blocked(100, 500)
    tasks, info = si_blurry_split(targets, stochastic=False, seed=1, return_info=True)
    assert [len(c) for c in info["disjoint_classes"]] == [10] * 5
    assert [len(c) for c in info["blurry_classes"]] == [10] * 5
    assert info["q"] == [500] * 5  # M% of each task's 5000 blurry samples
    assert [len(t) for t in tasks] == [10000] * 5
    assert sorted(i for t in tasks for i in t) == list(range(50000))
    stoch = si_blurry_split(targets, stochastic=True, seed=1)
    assert [len(t) for t in stoch] != [len(t) for t in tasks]


def test_fixed_branch_drops_pool_remainder_with_warning():
    targets = [c for c in range(6) for _ in range(10 * (c + 1))]  # class c donates c+1 samples at M=10
    with pytest.warns(UserWarning, match="blurred samples are dropped"):
        tasks, info = si_blurry_split(targets, n_tasks=3, stochastic=False, seed=0, return_info=True)
    dropped = sum(info["q"]) % 3
    assert dropped > 0
    assert sum(len(t) for t in tasks) == len(targets) - dropped


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(targets=[]), "empty"),
        (dict(targets=[0, 1], disjoint_pct=101), "disjoint_pct"),
        (dict(targets=[0, 1], disjoint_pct=-1), "disjoint_pct"),
        (dict(targets=[0, 1], blurry_pct=150), "blurry_pct"),
        (dict(targets=[0, 1], blurry_pct=12.5), "blurry_pct"),
        (dict(targets=[0, 1, 2], n_tasks=4), "more than the number of classes"),
        (dict(targets=[0, 1], n_tasks=0), "n_tasks"),
        (dict(targets=[0, -1]), ">= 0"),
        (dict(targets=[0, 5], n_classes=3), "out of range"),
    ],
)
def test_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        si_blurry_split(**kwargs)


def test_config_validation():
    with pytest.raises(ValueError, match="dataset"):
        SiBlurryConfig(dataset="mnist")
    with pytest.raises(ValueError, match="stream_mode"):
        SiBlurryConfig(stream_mode="random")


# ------------------------------------------------------------------------------------------------ benchmark
def synthetic(n_classes=6, per_class=10, dim=8):
    targets = blocked(n_classes, per_class)
    g = torch.Generator().manual_seed(0)
    y = torch.tensor(targets)
    x = torch.randn(len(targets), dim, generator=g) + 3 * torch.nn.functional.one_hot(y, dim).float()
    train = TensorDataset(x, y)
    train.targets = targets
    test = TensorDataset(x[::3], y[::3])
    test.targets = targets[::3]
    return train, test


def test_benchmark_streams_follow_the_split():
    train, test = synthetic()
    tasks = si_blurry_split(train.targets, n_tasks=3, seed=6)
    bench = si_blurry_benchmark(train, test, n_tasks=3, seed=6, online_experience_size=8)
    info = bench.info
    assert info.task_sizes == tuple(len(t) for t in tasks) and info.task_sizes[0] == 0
    assert info.n_classes == 6 and info.classnames is None and len(info.test_dataset) == len(test)
    assert info.online_experience_size == 8 and info.task_indices == tuple(tuple(t) for t in tasks)
    exps = list(bench.train_stream)
    assert len(exps) == 3
    for exp, idx in zip(exps, tasks):
        assert list(exp.dataset.targets) == [train.targets[i] for i in idx]  # stream order
        assert exp.classes_in_this_experience == {train.targets[i] for i in idx}
    x0, _ = exps[1].dataset[0]
    assert torch.equal(x0, train[tasks[1][0]][0])
    (test_exp,) = list(bench.test_stream)
    assert len(test_exp.dataset) == len(test)


def test_online_split_keeps_order_and_task_boundaries():
    train, test = synthetic()
    bench = si_blurry_benchmark(train, test, n_tasks=3, seed=6, online_experience_size=8, online=True)
    tasks = si_blurry_split(train.targets, n_tasks=3, seed=6)
    exps = list(bench.train_stream)
    assert [len(e.dataset) for e in exps] == [8, 8, 8, 6, 8, 8, 8, 6]  # tasks of 0, 30, 30 samples
    per_task = {}
    for e in exps:
        per_task.setdefault(e.origin_experience.current_experience, []).extend(e.dataset.targets)
    assert per_task == {t: [train.targets[i] for i in idx] for t, idx in enumerate(tasks) if idx}
    assert [e.is_last_subexp for e in exps].count(True) == 2
    assert [e.is_first_subexp for e in exps].count(True) == 2


def test_online_split_flags_the_last_batch_when_the_size_divides_the_task():
    targets = blocked(4, 8)
    train = TensorDataset(torch.randn(32, 2), torch.tensor(targets))
    train.targets = targets
    bench = si_blurry_benchmark(train, train, n_tasks=1, seed=0, online_experience_size=8, online=True)
    flags = [(len(e.dataset), e.is_first_subexp, e.is_last_subexp) for e in bench.train_stream]
    assert flags == [(8, True, False), (8, False, False), (8, False, False), (8, False, True)]


@pytest.mark.parametrize("online", [False, True])
@pytest.mark.parametrize("strategy", ["Naive", "Replay"])
def test_avalanche_strategies_run(strategy, online):
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training import supervised
    from avalanche.training.plugins import EvaluationPlugin

    train, test = synthetic()
    bench = si_blurry_benchmark(train, test, n_tasks=3, seed=6, online_experience_size=8, online=online)
    model = torch.nn.Linear(8, 6)
    before = model.weight.detach().clone()
    extra = {"mem_size": 10} if strategy == "Replay" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        strat = getattr(supervised, strategy)(
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            criterion=torch.nn.CrossEntropyLoss(),
            train_mb_size=8,
            train_epochs=1,
            eval_mb_size=32,
            device="cpu",
            evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]),
            **extra,
        )
        for exp in bench.train_stream:  # one train() per task or per online sub-experience
            strat.train(exp, shuffle=False)
        res = strat.eval(bench.test_stream)
    acc = res["Top1_Acc_Stream/eval_phase/test_stream"]
    assert 0.0 <= acc <= 1.0
    assert not torch.equal(model.weight, before)


def test_registered_builder_on_digits():
    from ctta.registry import SCENARIOS

    entry = SCENARIOS.get("si_blurry")
    assert entry.config is SiBlurryConfig
    cfg = SiBlurryConfig(dataset="digits", img_size=16, online_experience_size=16)
    bench = entry.builder(cfg, seed=1)
    info = bench.info
    assert info.n_classes == 10 and info.classnames[0] == "zero" and info.online_experience_size == 16
    n_train = len(info.train_dataset)
    assert sum(info.task_sizes) == n_train
    assert sorted(i for t in info.task_indices for i in t) == list(range(n_train))
    x, y = info.test_dataset[0]
    assert x.shape == (3, 16, 16) and isinstance(y, int)
    xb = torch.stack([bench.train_stream[0].dataset[i][0] for i in range(4)])  # (4, 3, 16, 16) in [0, 1]
    assert 0.0 <= xb.min() and xb.max() <= 1.0
    assert info.train_augment(xb).shape == (4, 3, 16, 16)
