"""A ctta strategy driven by a plain Avalanche script on a benchmark from Avalanche's own generator."""

from __future__ import annotations

import torch
from avalanche.benchmarks.scenarios import benchmark_from_datasets
from avalanche.training.supervised import Naive
from ctta.scenarios.class_incremental import ClassIncrementalConfig
from ctta.strategies.vpt import VPT, VPTConfig

from ctta.data.avl import as_avl_dataset
from ctta.evaluation import anytime_metric, make_evaluator
from ctta.registry import SCENARIOS


def test_vpt_on_benchmark_from_datasets(tiny_vit, digits):
    """Built as Avalanche's ``Naive`` is: nothing set on the benchmark; the test set is an explicit argument."""
    train, test = digits
    tr, te = as_avl_dataset(train), as_avl_dataset(test)
    bench = benchmark_from_datasets(train=[tr.subset(range(0, 200)), tr.subset(range(200, 400))], test=[te])
    s = VPT(
        model=tiny_vit.vit,  # a plain timm ViT (num_classes=0): VPT wraps it
        optimizer=None,  # VPT's reference Adam from its config
        criterion=None,
        train_mb_size=64,
        eval_mb_size=128,
        device="cpu",
        evaluator=make_evaluator(),
        config=VPTConfig(online_iters=1),
        anytime_eval_every=150,
        anytime_eval_dataset=te,
    )
    before = tiny_vit.state_dict()
    before = {k: v.clone() for k, v in before.items()}
    for exp in bench.train_stream:
        s.train(exp)
    res = s.eval(bench.test_stream)
    assert 0.0 <= res["Top1_Acc_Stream/eval_phase/test_stream"] <= 1.0
    m = anytime_metric(s.evaluator)
    assert [x for x, _ in m.periodic] == [150, 300] and len(m.task_end) == 2
    assert all(torch.equal(v, before[k]) for k, v in tiny_vit.state_dict().items())


def test_avalanche_naive_runs_on_our_class_incremental_benchmark():
    bench = SCENARIOS.get("class_incremental").builder(ClassIncrementalConfig(n_experiences=2, img_size=8), seed=0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    s = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        train_mb_size=64,
        eval_mb_size=256,
        device="cpu",
        evaluator=make_evaluator(),
    )
    for exp in bench.train_stream:
        s.train(exp)
    res = s.eval(bench.test_stream)
    assert res["Top1_Acc_Stream/eval_phase/test_stream"] > 0.3  # a linear model learns digits' last classes
