"""Avalanche conformance: every registered strategy is built and driven the way Avalanche's own strategies are.

An Avalanche user swaps ``Naive(...)`` for a ctta strategy and nothing else changes: Avalanche's constructor
arguments (``model`` = a plain timm ViT / open_clip CLIP, ``optimizer``, ``criterion``, ``train_mb_size``,
``train_epochs``, ``eval_mb_size``, ``device``, ``plugins``, ``evaluator``, ``eval_every``) plus the method's own
keyword arguments (or its config object); benchmarks from Avalanche's generators with nothing set on them; a user
``EvaluationPlugin`` with Avalanche loggers; ``evaluator=None`` silent; wrong arguments rejected with a message naming
them; missing class information derived or asked for by name.

Models and data are tiny (``tests/_conformance_cases.py``). ``PENDING`` lists, per case, the strategies (or single
parametrisations, by test id) that do not implement this API yet: they are ``xfail(strict=True)``, so a case that
starts passing fails the suite until its entry is removed.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import re
import warnings

import pytest
import torch
from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
from avalanche.logging import CSVLogger, TextLogger
from avalanche.training.plugins import EvaluationPlugin, SupervisedPlugin
from avalanche.training.supervised import Naive

from ctta.registry import STRATEGIES
from tests import _conformance_cases as cc

ALL = sorted(STRATEGIES)
FAMILY = {n: cc.SPECS[n].family if n in cc.SPECS else None for n in ALL}
ONLINE = [n for n in ALL if FAMILY[n] == "online"]

# Avalanche-style metric name: <metric>/<train|eval>_phase/<stream>_stream[/Task000][/Exp000]
AVALANCHE_NAME = re.compile(r"^[A-Za-z0-9_]+/(train|eval)_phase/[A-Za-z0-9_]+_stream(/[A-Za-z0-9_]+)*$")

# case -> strategy names or test ids expected to fail because the strategy lacks the API (strict xfail; remove an
# entry as soon as it passes). Every registered strategy conforms since 173ebaa and b6ae788: all empty.
PENDING: dict[str, set[str]] = {
    case: set()
    for case in (
        "anytime_test_data",
        "avalanche_benchmarks",
        "config_object",
        "eval_every",
        "user_evaluator",
        "evaluator_none",
        "default_evaluator",
        "misspelt",
        "online_train_epochs",
        "optimizer_criterion",
        "without_class_info",
    )
}
_REASON = "issue 11: the Avalanche-style constructor is not implemented by this strategy yet"
REASONS: dict[str, str] = {}  # case -> what is missing, where a case fails for a narrower reason than _REASON


def params(case: str, values: list, ids: list[str] | None = None) -> list:
    """``values`` as pytest params (first element or value = strategy name), strict-xfail where pending."""
    ids = ids or [str(v) for v in values]
    pending = PENDING[case]
    out = []
    for v, i in zip(values, ids):
        name = v[0] if isinstance(v, tuple) else v
        if name not in cc.SPECS:
            marks = [pytest.mark.skip(reason=f"{name} has no conformance spec (tests/_conformance_cases.SPECS)")]
        elif {name, i} & pending:
            marks = [pytest.mark.xfail(strict=True, reason=REASONS.get(case, _REASON))]
        else:
            marks = []
        out.append(pytest.param(*(v if isinstance(v, tuple) else (v,)), marks=marks, id=i))
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """DiffTPT's diffusion-view cache, shared by the module (views are seeded per image: the same in every test)."""
    return tmp_path_factory.mktemp("difftpt_cache")


class Count(SupervisedPlugin):
    """A user plugin counting the Avalanche events it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.training_exp = 0
        self.eval_streams: list[str] = []  # origin stream name of every evaluated experience
        self.eval_sizes: list[int] = []  # and its number of samples

    def before_training_exp(self, strategy, **kwargs) -> None:
        self.training_exp += 1

    def after_eval_exp(self, strategy, **kwargs) -> None:
        self.eval_streams.append(strategy.experience.origin_stream.name)
        self.eval_sizes.append(len(strategy.experience.dataset))


def build(name: str, cache, evaluator, **overrides):
    """The strategy ``name`` built as an Avalanche user builds one; returns ``(strategy, user_model)``."""
    model, method = cc.user_model(name, cache)
    kwargs = {**cc.avalanche_kwargs(name, evaluator), **method, **overrides}
    return STRATEGIES.get(name).builder(model=model, **kwargs), model


def silent_evaluator(*extra) -> EvaluationPlugin:
    """Accuracy and loss (plus ``extra``) without loggers (Avalanche warns about that; deliberate here)."""
    acc, loss = accuracy_metrics(experience=True, stream=True), loss_metrics(stream=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        return EvaluationPlugin(acc, loss, *extra, loggers=[])


def run(strategy, bench, train_stream=None, **train_kwargs) -> dict:
    """Avalanche's loop: ``train`` on every experience, then ``eval`` on the whole test stream."""
    for exp in bench.train_stream if train_stream is None else train_stream:
        strategy.train(exp, **train_kwargs)
    return strategy.eval(bench.test_stream)


def stream_metric(res: dict, metric: str) -> float:
    """``<metric>/eval_phase/test_stream`` (``/Task000`` appended on benchmarks with task labels, as in Avalanche)."""
    key = f"{metric}/eval_phase/test_stream"
    found = [k for k in res if k == key or re.fullmatch(re.escape(key) + r"/Task\d{3}", k)]
    assert len(found) == 1, f"{key} missing (or repeated) in {sorted(res)}"
    return float(res[found[0]])


def check_accuracy(res: dict) -> None:
    assert 0.0 <= stream_metric(res, "Top1_Acc_Stream") <= 1.0, res
    assert math.isfinite(stream_metric(res, "Loss_Stream")), res


def test_every_registered_strategy_has_a_conformance_spec():
    assert ALL, "no strategy registered"
    assert set(ALL) <= set(cc.SPECS), f"add {set(ALL) - set(cc.SPECS)} to tests/_conformance_cases.SPECS"


# ------------------------------------------------------------------------ 1. Avalanche arguments and benchmarks
CASES_1 = [(n, b) for n in ALL for b in ("class_incremental", "nc_benchmark") + (("online",) * (n in ONLINE))]


@pytest.mark.parametrize("name,kind", params("avalanche_benchmarks", CASES_1, [f"{n}-{b}" for n, b in CASES_1]))
def test_avalanche_arguments_on_avalanche_benchmarks(name, kind, cache):
    train, test = cc.data_for(name)
    bench = cc.legacy_nc(train, test) if kind == "nc_benchmark" else cc.class_incremental(train, test)
    count = Count()
    strategy, model = build(name, cache, silent_evaluator(), plugins=[count])
    assert any(m is model for m in strategy.model.modules()), "the strategy must wrap the user's model, not a copy"
    assert count in strategy.plugins
    before, attributes = cc.state(model), set(vars(bench))
    stream = list(cc.online(bench)) if kind == "online" else list(bench.train_stream)

    res = run(strategy, bench, stream)

    check_accuracy(res)
    assert set(vars(bench)) == attributes, f"attributes set on the benchmark: {set(vars(bench)) - attributes}"
    changed = cc.identical(model, before)
    assert not changed, f"backbone tensors changed: {changed[:5]}"
    assert count.eval_streams.count("test") >= len(bench.test_stream), "the user's plugin missed eval events"
    if cc.SPECS[name].family != "tta":
        assert count.training_exp == len(stream), "the user's plugin missed training events"


def _every0(count: Count) -> dict:
    return dict(train_mb_size=32, eval_mb_size=64, device="cpu", plugins=[count], evaluator=silent_evaluator(),
                eval_every=0)  # fmt: skip


@pytest.mark.parametrize("name", params("eval_every", [n for n in ALL if FAMILY[n] != "tta"]))
def test_eval_every_keeps_avalanches_meaning(name, cache):
    """``eval_every=0``: the ``eval_streams`` given to ``train()`` are evaluated exactly when Avalanche's ``Naive``
    evaluates them (before and after each experience)."""
    bench = cc.class_incremental(*cc.data_for(name))
    counts = Count(), Count()
    naive = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, cc.N_CLASSES))
    reference = Naive(model=naive, optimizer=torch.optim.SGD(naive.parameters(), lr=0.01), **_every0(counts[0]))
    strategy, _ = build(name, cache, **_every0(counts[1]))
    for s in (reference, strategy):
        for exp in bench.train_stream:
            s.train(exp, eval_streams=[bench.test_stream])
    expected, got = (c.eval_streams.count("test") for c in counts)
    assert expected > 0 and got == expected, (got, expected)


@pytest.mark.parametrize("name", params("config_object", ALL))
def test_config_object_instead_of_method_keywords(name, cache):
    entry = STRATEGIES.get(name)
    model, method = cc.user_model(name, cache)
    fields = {f.name for f in dataclasses.fields(entry.config)}
    config = entry.config(**{k: v for k, v in method.items() if k in fields}, **cc.SPECS[name].config_sizes)
    rest = {k: v for k, v in method.items() if k not in fields}  # e.g. CLIP's tokenizer and class names
    strategy = entry.builder(model=model, config=config, **cc.avalanche_kwargs(name, silent_evaluator()), **rest)

    check_accuracy(run(strategy, cc.class_incremental(*cc.data_for(name))))


# ------------------------------------------------------------------------ 2. user evaluator, Avalanche loggers
@pytest.mark.parametrize("name", params("user_evaluator", ALL))
def test_user_evaluator_and_avalanche_loggers(name, cache, tmp_path):
    spec = cc.SPECS[name]
    text_path, csv_dir = tmp_path / "log.txt", tmp_path / "csv"
    extra = spec.ctta_metrics() if spec.ctta_metrics else []
    bench = cc.multilabel_benchmark() if spec.multilabel else cc.class_incremental(*cc.data_for(name))
    with open(text_path, "w") as text:
        evaluator = EvaluationPlugin(
            accuracy_metrics(experience=True, stream=True),
            loss_metrics(experience=True, stream=True),
            *extra,
            loggers=[TextLogger(text), CSVLogger(str(csv_dir))],
        )
        overrides = {"anytime_eval_every": 40} if spec.family == "online" else {}
        strategy, _ = build(name, cache, evaluator, **overrides)
        res = run(strategy, bench, eval_streams=[bench.test_stream])  # Avalanche's way to name the test data
    n_test = len(bench.test_stream)

    check_accuracy(res)
    for key, value in res.items():
        assert AVALANCHE_NAME.match(key), f"not an Avalanche-style metric name: {key}"
        assert not isinstance(value, float) or math.isfinite(value), (key, value)
    for k in range(n_test):
        for metric in ("Top1_Acc_Exp", "Loss_Exp"):
            assert f"{metric}/eval_phase/test_stream/Exp{k:03d}" in res, sorted(res)
    everything = strategy.evaluator.get_all_metrics()
    for prefix in spec.metric_names:  # ctta's metrics
        found = [k for k in everything if k.split("/")[0] == prefix]
        assert found, f"no {prefix} metric among {sorted(everything)}"
        assert all(AVALANCHE_NAME.match(k) for k in found), found
        assert any(k in res for k in found), f"{found} not in eval()'s return"

    logged = text_path.read_text()
    missing = [k for k in res if f"\t{k} = " not in logged]
    assert not missing, f"metrics missing from the TextLogger file: {missing}"
    top1 = "Top1_Acc_Stream/eval_phase/test_stream"
    last = re.findall(rf"\t{re.escape(top1)} = ([0-9.]+)", logged)[-1]
    assert float(last) == pytest.approx(res[top1], abs=1e-4)
    with open(csv_dir / "eval_results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= n_test, rows
    for k, row in enumerate(rows[-n_test:]):  # the final eval: one row per test experience
        exp = f"eval_phase/test_stream/Exp{k:03d}"
        assert int(row["eval_exp"]) == k
        assert float(row["eval_accuracy"]) == pytest.approx(res[f"Top1_Acc_Exp/{exp}"], abs=1e-4)
        assert float(row["eval_loss"]) == pytest.approx(res[f"Loss_Exp/{exp}"], abs=1e-4)


@pytest.mark.parametrize("name", params("anytime_test_data", ONLINE))
def test_anytime_evaluation_runs_on_the_eval_streams_given_to_train(name, cache):
    """Online methods: a benchmark from ``class_incremental_benchmark`` does not reach its test stream from the
    experiences; the user names the test data the Avalanche way (``train(exp, eval_streams=[test_stream])``) and
    the anytime evaluation (A_auc / A_last) runs on it, without a warning."""
    bench = cc.class_incremental(*cc.data_for(name))
    count = Count()
    evaluator = silent_evaluator(*cc.SPECS[name].ctta_metrics())
    strategy, _ = build(name, cache, evaluator, plugins=[count], anytime_eval_every=40)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for exp in bench.train_stream:
            strategy.train(exp, eval_streams=[bench.test_stream])
    n_test = sum(len(exp.dataset) for exp in bench.test_stream)
    assert count.eval_sizes and max(count.eval_sizes) == n_test, (count.eval_sizes, n_test)  # seen classes' test
    names = {k.split("/")[0] for k in strategy.evaluator.get_all_metrics()}
    assert {"A_auc", "A_last"} <= names, names
    anytime_warnings = [str(w.message) for w in caught if "anytime" in str(w.message)]
    assert not anytime_warnings, anytime_warnings


# ------------------------------------------------------------------------ 3. evaluator=None; the default evaluator
@pytest.mark.parametrize("name", params("evaluator_none", ALL))
def test_evaluator_none_logs_nothing(name, cache, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bench = cc.class_incremental(*cc.data_for(name))
    strategy, _ = build(name, cache, None)

    res = run(strategy, bench)

    assert res == {}, res
    assert strategy.evaluator.metrics == [] and not strategy.evaluator.loggers
    assert capsys.readouterr().out == ""
    assert not list(tmp_path.iterdir()), "files were written"


@pytest.mark.parametrize("name", params("default_evaluator", ALL))
def test_default_evaluator_has_avalanche_metrics_and_a_logger(name, cache):
    model, method = cc.user_model(name, cache)
    kwargs = cc.avalanche_kwargs(name, None)
    del kwargs["evaluator"]  # Avalanche's default: default_evaluator
    strategy = STRATEGIES.get(name).builder(model=model, **kwargs, **method)

    evaluator = strategy.evaluator
    assert isinstance(evaluator, EvaluationPlugin)
    metric_names = {str(m) for m in evaluator.metrics}
    assert {"Top1_Acc_Stream", "Loss_Stream"} <= metric_names, metric_names
    assert evaluator.loggers, "the default evaluator logs nowhere: a run would be silent"


# ------------------------------------------------------------------------ 4. wrong arguments
@pytest.mark.parametrize("name", params("misspelt", ALL))
def test_misspelt_keyword_raises_type_error_naming_it(name, cache):
    with pytest.raises(TypeError, match="eval_mb_sise"):
        build(name, cache, None, eval_mb_sise=8)
    misspelt = cc.SPECS[name].misspelt  # one of the method's own keywords
    with pytest.raises(TypeError, match=misspelt):
        build(name, cache, None, **{misspelt: 1})


@pytest.mark.parametrize("name", params("online_train_epochs", ONLINE))
def test_online_method_refuses_more_than_one_epoch(name, cache):
    with pytest.raises(ValueError, match="train_epochs"):
        build(name, cache, None, train_epochs=2)


def _used_or_refused(name, cache, arg: str, make) -> None:
    """``arg`` is either kept (the strategy holds it and trains with it) or refused by a ValueError saying why."""
    model, method = cc.user_model(name, cache)
    value = make(model)
    kwargs = {**cc.avalanche_kwargs(name, silent_evaluator()), **method, arg: value}
    try:
        strategy = STRATEGIES.get(name).builder(model=model, **kwargs)
    except ValueError as e:
        msg = str(e)
        assert arg in msg and len(msg.split()) >= 6, f"{arg} refused without saying why: {msg!r}"
        return
    held = strategy.optimizer if arg == "optimizer" else strategy._criterion
    assert held is value, f"{arg} accepted but not used"
    before = cc.state(model)
    check_accuracy(run(strategy, cc.class_incremental(*cc.data_for(name))))
    assert not cc.identical(model, before), f"the user's {arg} changed the backbone"


@pytest.mark.parametrize("name", params("optimizer_criterion", ALL))
def test_optimizer_and_criterion_are_used_or_refused_with_a_reason(name, cache):
    _used_or_refused(name, cache, "optimizer", lambda m: torch.optim.SGD(m.parameters(), lr=0.01))
    _used_or_refused(name, cache, "criterion", lambda m: torch.nn.CrossEntropyLoss(label_smoothing=0.1))


# ------------------------------------------------------------------------ 5. no class information
def _raises_naming(fn, names: tuple[str, ...]) -> bool:
    """True if ``fn()`` raised a clear error naming one of ``names``; False if it ran. Raw AttributeError, KeyError
    or IndexError propagate (and fail the test)."""
    try:
        fn()
    except (ValueError, TypeError, RuntimeError) as e:
        assert any(n in str(e) for n in names), f"unclear error, should name one of {names}: {e!r}"
        return True
    return False


@pytest.mark.parametrize("name", params("without_class_info", ALL))
def test_without_class_info_it_is_derived_or_asked_for_by_name(name, cache):
    """ViT methods: no ``num_classes`` and a benchmark without class information (only the datasets' targets);
    CLIP methods: no class names. Either the strategy derives what it needs, or it raises an error naming the
    argument, and then works when given it."""
    spec = cc.SPECS[name]
    train, test = cc.data_for(name)
    bench = cc.from_datasets(train, test)  # no class timeline, no n_classes: only the datasets' targets
    arg, value = ("classnames", cc.classnames()) if spec.clip else ("num_classes", cc.N_CLASSES)

    def without():
        model, method = cc.user_model(name, cache)
        method.pop(arg, None)
        strategy = STRATEGIES.get(name).builder(model=model, **cc.avalanche_kwargs(name, silent_evaluator()), **method)
        check_accuracy(run(strategy, bench))

    if _raises_naming(without, (arg,)):
        strategy, _ = build(name, cache, silent_evaluator(), **{arg: value})
        check_accuracy(run(strategy, bench))
