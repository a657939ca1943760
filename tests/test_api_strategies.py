"""The Avalanche-style constructor shared by every strategy (``ctta.templates.base``): refusals with reasons,
Avalanche's ``eval_every`` kept apart from the anytime evaluation, class count / test set / class names read from
Avalanche benchmarks, ``from_config`` as a thin wrapper, DAM-VP's accuracies through the evaluator."""

from __future__ import annotations

import warnings

import pytest
import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.benchmarks.scenarios import benchmark_from_datasets, class_incremental_benchmark
from avalanche.benchmarks.utils import as_classification_dataset
from avalanche.training.plugins import EvaluationPlugin
from ctta.strategies.damvp import DAMVP, DAMVPConfig
from ctta.strategies.dualprompt import DualPrompt
from ctta.strategies.l2p import L2P
from ctta.strategies.multilane import MultiLane
from ctta.strategies.mvp import MVP
from ctta.strategies.tpt import TPT
from ctta.strategies.vpt import VPT, VPTConfig
from torch.utils.data import TensorDataset

from ctta.evaluation import anytime_metric, make_evaluator
from ctta.metrics import AnytimeAccuracy
from ctta.templates.benchmark_info import BenchmarkInfo, experience_classes, infer_num_classes, with_info

# every argument a strategy refuses: (class, argument) -> a word of the reason
REFUSED = {
    (MVP, "criterion"): "GSF",
    (L2P, "criterion"): "CutMix",
    (DualPrompt, "criterion"): "CutMix",
    (MultiLane, "optimizer"): "Adam",
    (MultiLane, "criterion"): "BCE",
    (DAMVP, "optimizer"): "SGD",
    (DAMVP, "criterion"): "cross-entropy",
    (TPT, "optimizer"): "AdamW",
    (TPT, "criterion"): "entropy",
}


def _data(n=60, classes=6, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, 3, size, size, generator=g), torch.arange(n) % classes
    ds = TensorDataset(x, y)
    ds.targets = y.tolist()
    return ds


def _vit():
    import timm

    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=16, patch_size=8, depth=2, embed_dim=24,
        num_heads=2,
    )  # fmt: skip


def _silent():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return EvaluationPlugin(loggers=[])


@pytest.mark.parametrize(("cls", "arg"), sorted(REFUSED, key=lambda k: (k[0].__name__, k[1])))
def test_refused_arguments_raise_a_value_error_saying_why(cls, arg):
    value = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1) if arg == "optimizer" else torch.nn.MSELoss()
    with pytest.raises(ValueError, match=REFUSED[(cls, arg)]) as err:
        cls(model=torch.nn.Linear(2, 2), **{arg: value})
    msg = str(err.value)
    assert arg in msg and len(msg.split()) >= 12, msg  # names the argument and says why


def test_online_methods_refuse_epochs_naming_online_iters_and_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="online_iters"):
        VPT(model=_vit(), train_epochs=3)
    with pytest.raises(TypeError, match=r"n_promts.*valid: .*n_prompts"):
        VPT(model=_vit(), n_promts=2)
    with pytest.raises(TypeError, match="eval_mb_sise"):
        MultiLane(model=_vit(), eval_mb_sise=3)


def test_user_optimizer_and_criterion_are_used_and_eval_every_is_avalanches():
    vit = _vit()
    opt, crit = torch.optim.SGD(vit.parameters(), lr=0.05, momentum=0.5), torch.nn.CrossEntropyLoss()
    s = VPT(model=vit, optimizer=opt, criterion=crit, num_classes=6, eval_every=2, anytime_eval_every=30,
            evaluator=_silent(), device="cpu", n_prompts=2)  # fmt: skip
    assert s.optimizer is opt and s._criterion is crit
    assert s.eval_every == 2 and s.anytime_eval_every == 30  # Avalanche's PeriodicEval vs ctta's anytime
    s.make_optimizer()
    held = [p for g in opt.param_groups for p in g["params"]]
    assert held and all(p.requires_grad for p in held) and opt.defaults["momentum"] == 0.5  # trainable only
    assert not any(p is q for p in held for q in vit.parameters())


def test_class_count_comes_from_timeline_legacy_benchmark_or_targets():
    ds = as_classification_dataset(_data())
    ci = class_incremental_benchmark({"train": ds, "test": ds}, num_experiences=2)
    assert infer_num_classes(ci.train_stream[0]) == 6
    nc = nc_benchmark(_data(), _data(), n_experiences=2, task_labels=False, seed=0)
    assert infer_num_classes(nc.train_stream[1]) == 6
    first = ds.subset([i for i, y in enumerate(ds.targets) if y < 3])
    bd = benchmark_from_datasets(train=[first, ds], test=[ds])
    assert infer_num_classes(bd.train_stream[0]) == 6  # every experience of the origin stream is read
    assert experience_classes(bd.train_stream[0]) == [0, 1, 2]


def test_a_model_needing_the_class_count_is_built_at_the_first_experience():
    ds = as_classification_dataset(_data())
    bench = class_incremental_benchmark({"train": ds, "test": ds}, num_experiences=2)
    s = VPT(model=_vit(), evaluator=_silent(), device="cpu", n_prompts=2, train_mb_size=20, online_iters=1)
    with pytest.warns(UserWarning, match="anytime_eval_dataset"):  # no test set reachable: said once
        s.train(bench.train_stream[0])
    assert s.model.head.out_features == 6 and s.num_classes == 6
    s.train(bench.train_stream[1])  # no second warning needed; still trains
    assert s.seen_samples == 60


def test_anytime_evaluation_uses_the_given_test_set():
    tr, te = as_classification_dataset(_data()), as_classification_dataset(_data(seed=1))
    bench = class_incremental_benchmark({"train": tr, "test": te}, num_experiences=2)
    ev = make_evaluator()
    s = VPT(model=_vit(), evaluator=ev, device="cpu", n_prompts=2, train_mb_size=10, online_iters=1,
            anytime_eval_dataset=te, anytime_eval_every=20)  # fmt: skip
    for exp in bench.train_stream:
        s.train(exp)
    m = anytime_metric(ev)
    assert [x for x, _ in m.periodic] == [20, 40] and len(m.task_end) == 2
    assert any(k.startswith("A_auc/eval_phase/") for k in ev.get_last_metrics())
    assert VPT.metrics()[0].__class__ is AnytimeAccuracy


def test_from_config_is_the_constructor_with_the_benchmarks_fields(tiny_vit, digits):
    from ctta.data.avl import as_avl_dataset

    train, test = digits
    tr, te = as_avl_dataset(train), as_avl_dataset(test)
    bench = benchmark_from_datasets(train=[tr.subset(range(64))], test=[te])
    with_info(bench, BenchmarkInfo(n_classes=10, test_dataset=te))  # what ctta's scenarios attach
    cfg = VPTConfig(online_iters=1, eval_every=32, batch_size=16)  # the incoming batch is the strategy's own
    torch.manual_seed(0)
    a = VPT.from_config(cfg, backbone=tiny_vit, benchmark=bench, device="cpu", evaluator=make_evaluator())
    torch.manual_seed(0)
    b = VPT(model=tiny_vit, config=cfg, num_classes=10, anytime_eval_dataset=te, train_mb_size=16, device="cpu",
            evaluator=make_evaluator())  # fmt: skip
    assert a.train_mb_size == b.train_mb_size == 16 and a.anytime_eval_every == b.anytime_eval_every == 32
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_damvp_validation_and_test_accuracy_reach_the_evaluator(tiny_vit):
    from ctta.scenarios.transfer import TransferConfig, build_transfer

    bench = build_transfer(TransferConfig(datasets=("digits/0/2",), img_size=32, max_per_split=48))
    cfg = DAMVPConfig(tau=0.7, lr=1000.0, epochs=2, batch_size=16, eval_batch_size=64, pad_width=4, n_noise=32,
                      test_every_epochs=2)  # fmt: skip
    ev = make_evaluator()
    s = DAMVP.from_config(cfg, backbone=tiny_vit, benchmark=bench, device="cpu", evaluator=ev)
    s.train(bench.train_stream[0], eval_streams=[])
    logged = ev.get_all_metrics()
    valid = [k for k in logged if k.startswith("Top1_Acc_Valid/train_phase/")]
    test = [k for k in logged if k.startswith("Top1_Acc_Test/train_phase/")]
    assert valid and test, sorted(logged)
    assert logged[valid[0]][1] == [r["val_acc"] for r in s.history[0]]
    assert logged[test[0]][1] == [s.history[0][1]["test_acc"]]


def test_anytime_evaluation_without_any_evaluation_data_says_so_once():
    ds = as_classification_dataset(_data())
    bench = class_incremental_benchmark({"train": ds, "test": ds}, num_experiences=2)
    s = VPT(model=_vit(), evaluator=_silent(), device="cpu", n_prompts=2, train_mb_size=30, online_iters=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for exp in bench.train_stream:
            s.train(exp, eval_streams=[])
    said = [str(w.message) for w in caught if "anytime" in str(w.message)]
    assert len(said) == 1 and "eval_streams" in said[0] and "anytime_eval_dataset" in said[0], said
