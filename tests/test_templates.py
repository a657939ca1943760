"""OnlineCLTemplate and TestTimeTemplate mechanics on a tiny linear model (no ViT needed)."""

from __future__ import annotations

import torch
from avalanche.benchmarks.scenarios import DatasetExperience
from avalanche.training.plugins import SupervisedPlugin
from torch import nn

from ctta.benchmark_builders import single_experience_stream
from ctta.clip_prompting.zero_shot import ZeroShotTemplate
from ctta.evaluation import anytime_metric, make_evaluator
from ctta.templates import TestTimeTemplate
from tests.helpers import LinearOnline as Linear
from tests.helpers import linear_data as _data
from tests.helpers import linear_strategy as _strategy


def test_online_loop_order_updates_and_exposure():
    train = _data()
    s, rec, model = _strategy(train)
    bias = model[0].bias.detach().clone()
    s.train(DatasetExperience(dataset=train, current_experience=0), eval_streams=[])
    ys = train.targets
    assert rec.batches == [list(ys[i : i + 8]) for i in range(0, 40, 8)]  # stream order, no shuffle
    assert rec.updates == 3 * 5  # online_iters per incoming batch
    first_seen = list(dict.fromkeys(ys))
    assert s.exposed == first_seen  # first-appearance order
    assert s.seen_samples == 40
    assert torch.equal(model[0].bias, bias)
    assert [p for g in s.optimizer.param_groups for p in g["params"]] == [model[0].weight]


def test_optimizer_state_survives_experiences():
    train = _data()
    s, _, model = _strategy(train)
    s.train(DatasetExperience(dataset=train.subset(range(16)), current_experience=0), eval_streams=[])
    step = s.optimizer.state[model[0].weight]["step"].item()
    s.train(DatasetExperience(dataset=train.subset(range(16, 32)), current_experience=1), eval_streams=[])
    assert s.optimizer.state[model[0].weight]["step"].item() == step + 6


def test_anytime_eval_schedule_and_seen_class_filter():
    train, test = _data(), _data(n=30, seed=1)
    s, _, _ = _strategy(train, test, bs=8, every=16)
    s.train(DatasetExperience(dataset=train, current_experience=0), eval_streams=[])
    m = anytime_metric(s.evaluator)
    # batches end at 8,16,24,32,40: seen > num_eval fires at 24 (x=16) and 40 (x=32)
    assert [x for x, _ in m.periodic] == [16, 32]
    assert [x for x, _ in m.task_end] == [40]
    assert set(m.task_end_per_class[0]) <= set(s.exposed)
    assert 0.0 <= m.result()["A_last"] <= 1.0


def test_seen_mask_and_class_reindexing():
    train = _data()
    s, _, _ = _strategy(train)
    s.expose(torch.tensor([3, 1, 3]))
    assert s.exposed == [3, 1]
    logits = torch.arange(10.0).view(2, 5) + s.seen_mask()
    out = s.positions_to_classes(logits)
    assert out[0, 3] == 0 and out[0, 1] == 1 and torch.isinf(out[0, [0, 2, 4]]).all()


class Shift(TestTimeTemplate):
    """Adapts a bias towards the batch mean: an observable state change."""

    def adapt_and_predict(self, x):
        loss = ((self.model.b - x.mean()) ** 2).sum()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return (x.sum(-1, keepdim=True) + self.model.b).repeat(1, 3)


def _tta(episodic):
    model = nn.Module()
    model.b = nn.Parameter(torch.zeros(3))
    opt = torch.optim.Adam([model.b], lr=0.5)
    return Shift(
        model=model, optimizer=opt, episodic=episodic, eval_mb_size=2, device="cpu", evaluator=make_evaluator()
    )


def test_test_time_episodic_resets_and_continual_keeps():
    ds = _data(n=6, d=4, c=3)
    exp = single_experience_stream(ds)
    ep = _tta(True)
    ep.eval(exp)
    assert torch.equal(ep.model.b, torch.zeros(3)) and not ep.optimizer.state_dict()["state"]
    co = _tta(False)
    co.eval(exp)
    assert not torch.equal(co.model.b, torch.zeros(3))


# ---------------------------------------------------------------------- the template's own loop
_TRAIN_CALLBACKS = sorted(
    n for n in dir(SupervisedPlugin) if n.startswith(("before_", "after_")) and "eval" not in n
)


def _callback_log(log: list[str]) -> SupervisedPlugin:
    """A plugin appending the name of every training callback it receives to ``log``."""

    def make(name):
        return lambda self, strategy, **kw: log.append(name)

    return type("CallbackLog", (SupervisedPlugin,), {n: make(n) for n in _TRAIN_CALLBACKS})()


def test_train_runs_avalanche_callbacks_in_avalanche_order():
    """The template's own loop fires the same training callbacks, in the same order, as Avalanche's
    ``SupervisedTemplate`` (one update per mini-batch, two experiences)."""
    from avalanche.training.templates import SupervisedTemplate

    data = _data()
    exps = [DatasetExperience(dataset=data.subset(range(i, i + 16)), current_experience=i // 16) for i in (0, 16)]
    ours, ref = [], []
    torch.manual_seed(0)
    s = Linear(model=nn.Linear(6, 5), optimizer=torch.optim.SGD(nn.Linear(6, 5).parameters(), lr=0.1),
               num_classes=5, online_iters=1, train_mb_size=8, anytime_eval_dataset=False, device="cpu",
               plugins=[_callback_log(ours)], evaluator=None)  # fmt: skip
    model = nn.Linear(6, 5)
    avl = SupervisedTemplate(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=8,
                             device="cpu", plugins=[_callback_log(ref)], evaluator=None)  # fmt: skip
    for exp in exps:
        s.train(exp, eval_streams=[])
        avl.train(exp, eval_streams=[])
    assert ours == ref and ours.count("after_update") == 4 and ours[0] == "before_training"


def test_training_step_stack_is_short():
    """From ``train()`` to the strategy's ``criterion()`` is at most 4 frames (train -> train_experience ->
    sgd_update -> criterion) and to its ``forward_logits()`` at most 6; Avalanche's loop is not on the way."""
    import traceback

    stacks: dict[str, list] = {}

    class Probe(Linear):
        def forward_logits(self):
            stacks.setdefault("forward", traceback.extract_stack())
            return super().forward_logits()

        def criterion(self):
            stacks.setdefault("loss", traceback.extract_stack())
            return super().criterion()

    s = Probe(model=nn.Linear(6, 5), num_classes=5, online_iters=1, train_mb_size=8, anytime_eval_dataset=False,
              optimizer=torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), device="cpu", evaluator=None)
    s.train(DatasetExperience(dataset=_data(n=8), current_experience=0), eval_streams=[])
    for key, bound in (("loss", 4), ("forward", 6)):
        stack = stacks[key]  # ends with the probed method
        start = max(i for i, f in enumerate(stack) if f.name == "test_training_step_stack_is_short")
        frames = stack[start + 1 :]
        assert frames[0].name == "train" and len(frames) <= bound, [f.name for f in frames]
        assert not any("avalanche" in f.filename for f in frames), [f.filename for f in frames]


# ---------------------------------------------------------------------- declared capabilities
def test_runner_reads_declared_capabilities_not_duck_typing():
    """The runner asks strategies what they can do through attributes declared on ``StrategyBase`` (and summary
    metrics by their ``SummaryMetric`` type): no ``hasattr``, class-name or ``__module__`` tests."""
    import re
    from pathlib import Path

    import ctta.runner.cli as cli
    import ctta.runner.run as run
    from ctta.registry import STRATEGIES
    from ctta.templates import OnlineCLTemplate, StrategyBase

    for module in (run, cli):
        src = Path(module.__file__).read_text()
        assert not re.search(r"hasattr\(|__module__|\)\.__name__ ==", src), module.__name__
    for name in STRATEGIES:
        cls = STRATEGIES.get(name).builder
        assert issubclass(cls, StrategyBase), name
        assert cls.resumable == issubclass(cls, OnlineCLTemplate), name
        assert cls.adapts_in_eval == issubclass(cls, TestTimeTemplate), name
        assert not (cls.resumable and cls.adapts_in_eval), name
        # the CLIP prompt learners record their epochs; the zero-shot / search ones (nothing trains) have none
        assert cls.records_epochs == (hasattr(cls, "build_prompted") and not cls.zero_shot), name
        assert cls.zero_shot == issubclass(cls, ZeroShotTemplate), name
    assert STRATEGIES.get("difftpt").builder.pregenerate is not StrategyBase.pregenerate


def test_default_optional_steps():
    """``pregenerate`` defaults to "nothing to pre-generate" (None); an online strategy whose anytime evaluation ran
    inside ``train()`` adds no evaluation after the experience."""
    s, _, _ = _strategy(_data(), test=_data(n=16, seed=1))
    assert s.pregenerate([]) is None
    assert s.eval_after_experience(None, 0) is None  # the benchmark is not even read
