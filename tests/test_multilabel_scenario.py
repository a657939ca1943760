"""MLCIL builder: class order, task splits, membership, masks, bad inputs, a plain Avalanche script (spec §6, §12)."""

from __future__ import annotations

import random

import pytest
import torch
from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive
from ctta.scenarios.multilabel import (
    MultiLabelConfig,
    MultiLaneCILConfig,
    build_multilabel,
    build_multilane_cil,
    class_order,
    multilabel_benchmark,
    task_classes,
)
from ctta.strategies.multilane.metrics import MultiLabelMetrics

from ctta.data.multilabel_datasets import MultiLabelDataset, parse_coco
from ctta.registry import SCENARIOS

COCO_NAMES = [
    n.replace("_", " ")
    for n in (
        "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign "
        "parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie "
        "suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard "
        "tennis_racket bottle wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot "
        "hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv laptop mouse remote keyboard "
        "cell_phone microwave oven toaster sink refrigerator book clock vase scissors teddy_bear hair_drier toothbrush"
    ).split()
]


@pytest.mark.parametrize(
    ("n", "base", "inc", "sizes"),
    [(80, 0, 10, [10] * 8), (80, 40, 10, [40, 10, 10, 10, 10]), (20, 0, 4, [4] * 5), (20, 10, 2, [10] + [2] * 5),
     (7, 3, 3, [3, 3, 1])],
)  # fmt: skip
def test_task_splits(n, base, inc, sizes):
    tasks = task_classes(list(range(n)), base, inc)
    assert [len(t) for t in tasks] == sizes and [c for t in tasks for c in t] == list(range(n))


def test_task_split_bad_inputs():
    for base, inc in ((0, 0), (-1, 2), (20, 2)):
        with pytest.raises(ValueError, match="base_classes"):
            task_classes(list(range(20)), base, inc)


def test_coco_b0_c10_task_lists(tmp_path):
    import json

    cats = [{"id": 100 - i, "name": n} for i, n in enumerate(COCO_NAMES)]
    f = tmp_path / "inst.json"
    f.write_text(json.dumps({"images": [], "annotations": [], "categories": cats}))
    names, _, _ = parse_coco(f)
    tasks = [[names[c] for c in t] for t in task_classes(class_order(80), 0, 10)]
    assert tasks[0] == ["airplane", "apple", "backpack", "banana", "baseball bat", "baseball glove", "bear", "bed",
                        "bench", "bicycle"]  # fmt: skip
    ends = [(t[0], t[-1]) for t in tasks[1:]]
    assert ends == [("bird", "carrot"), ("cat", "donut"), ("elephant", "keyboard"), ("kite", "person"),
                    ("pizza", "skis"), ("snowboard", "toaster"), ("toilet", "zebra")]  # fmt: skip


def test_shuffle_uses_python_random_with_seed():
    want = list(range(20))
    random.Random(5).shuffle(want)
    assert class_order(20, "yes", 5) == want and class_order(20) == list(range(20))
    with pytest.raises(ValueError, match="shuffle"):
        class_order(20, "random")


def _toy():
    sets_tr = [(0,), (1, 2), (3,), (0, 3), (), (2,), (1,)]
    sets_te = [(3,), (0,), (), (1, 3), (2,)]
    imgs = lambda n: [torch.full((3, 4, 4), float(i)) for i in range(n)]  # noqa: E731
    names = ["a", "b", "c", "d"]
    return MultiLabelDataset(imgs(7), sets_tr, names), MultiLabelDataset(imgs(5), sets_te, names)


def test_membership_masks_and_full_multi_hot_targets():
    tr, te = _toy()
    bench = multilabel_benchmark(tr, te, [(0, 1), (2, 3)], tr.classes)
    e0, e1 = bench.train_stream[0], bench.train_stream[1]
    assert [int(e0.dataset[i][0][0, 0, 0]) for i in range(len(e0.dataset))] == [0, 1, 3, 6]
    assert [int(e1.dataset[i][0][0, 0, 0]) for i in range(len(e1.dataset))] == [1, 2, 3, 5]  # 4: no labels
    assert e1.dataset[2][1].tolist() == [1.0, 0.0, 0.0, 1.0]  # image 3: full multi-hot, past label kept
    assert e1.classes_in_this_experience == {2, 3} and e1.previous_classes == {0, 1}
    assert e0.future_classes == {2, 3} and e1.classes_seen_so_far == {0, 1, 2, 3}
    assert e1.class_mask.tolist() == [False, False, True, True] and e0.seen_class_mask.tolist() == [1, 1, 0, 0]
    t0, t1 = bench.test_stream[0], bench.test_stream[1]
    assert [int(t0.dataset[i][0][0, 0, 0]) for i in range(len(t0.dataset))] == [1, 3]  # cumulative seen set
    assert len(t1.dataset) == 4 and t1.seen_class_mask.all()
    assert list(e1.dataset.labels_multi) == [(1, 2), (3,), (0, 3), (2,)]
    info = bench.info
    assert info.n_classes == 4 and info.task_classes == ((0, 1), (2, 3)) and len(info.test_dataset) == 4
    assert info.multilabel and info.cumulative_test


def test_bad_inputs_raise():
    tr, te = _toy()
    with pytest.raises(ValueError, match="without training images"):
        multilabel_benchmark(MultiLabelDataset(tr.items, [(0,)] * 7, tr.classes), te, [(0, 1), (2, 3)])
    with pytest.raises(ValueError, match="partition"):
        multilabel_benchmark(tr, te, [(0, 1), (1, 3)])

    class Single(torch.utils.data.Dataset):
        targets = [0, 1, 2]

        def __len__(self):
            return 3

    with pytest.raises(ValueError, match="not multi-hot"):
        multilabel_benchmark(Single(), te, [(0, 1), (2, 3)])
    Single.targets = torch.tensor([[0, 2, 0, 0]] * 3)
    with pytest.raises(ValueError, match="not multi-hot"):
        multilabel_benchmark(Single(), te, [(0, 1), (2, 3)])


def test_registered_builder_synthetic():
    entry = SCENARIOS.get("multilabel")
    assert entry.config is MultiLabelConfig
    cfg = MultiLabelConfig(dataset="synthetic", increment=4, img_size=16, synthetic_train=24, synthetic_test=12)
    bench = entry.builder(cfg, seed=0)
    assert len(bench.train_stream) == 3 and bench.info.classnames[0] == "class_00"
    x, y = bench.train_stream[2].dataset[0]
    assert x.shape == (3, 16, 16) and y.shape == (12,)
    shuffled = build_multilabel(MultiLabelConfig(shuffle="yes", increment=4, img_size=16), seed=3)
    assert shuffled.info.task_classes[0] == tuple(class_order(12, "yes", 3)[:4])
    with pytest.raises(ValueError, match="unknown multi-label dataset"):
        build_multilabel(MultiLabelConfig(dataset="nus"))
    with pytest.raises(FileNotFoundError, match="VOC"):
        build_multilabel(MultiLabelConfig(dataset="voc", root="/nonexistent"))


def test_plain_avalanche_naive_bce_drives_the_benchmark():
    torch.manual_seed(0)
    cfg = MultiLabelConfig(increment=4, img_size=8, synthetic_train=36, synthetic_test=24)
    bench = build_multilabel(cfg, seed=0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 12))
    ml = MultiLabelMetrics()
    ev = EvaluationPlugin(accuracy_metrics(experience=True), loss_metrics(experience=True), ml, loggers=[])
    strat = Naive(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
                  criterion=torch.nn.BCEWithLogitsLoss(), train_mb_size=8, train_epochs=2, eval_mb_size=16,
                  device="cpu", evaluator=ev)  # fmt: skip
    for t, exp in enumerate(bench.train_stream):
        strat.train(exp)
        res = strat.eval(bench.test_stream[t])
    key = "mAP/eval_phase/test_stream/Exp002"
    assert 0.0 < res[key] <= 1.0 and "amAP/eval_phase/test_stream/Exp002" in res
    assert sorted(ml.map_after_task) == [0, 1, 2]
    assert all(0 <= res[f"{k}/eval_phase/test_stream/Exp002"] <= 1 for k in ("CF1", "OF1"))


def test_cil_adapter_label_order_on_digits():
    bench = build_multilane_cil(MultiLaneCILConfig(dataset="digits", n_experiences=5, img_size=8), seed=0)
    assert [sorted(e.classes_in_this_experience) for e in bench.train_stream] == [[0, 1], [2, 3], [4, 5], [6, 7],
                                                                                  [8, 9]]  # fmt: skip
    assert bench.info.n_classes == 10 and len(bench.test_stream) == 5
