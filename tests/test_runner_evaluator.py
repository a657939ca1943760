"""``ctta.evaluation.default_evaluator``: Avalanche's default metrics and logger plus ctta's metrics."""

from avalanche.logging import InteractiveLogger, TextLogger
from avalanche.training.plugins.evaluation import default_evaluator as avalanche_default

from ctta.evaluation import default_evaluator
from ctta.metrics import AnytimeAccuracy, TopKAccuracy


def test_default_evaluator_extends_avalanche_default():
    ours = default_evaluator()
    names = [str(m) for m in ours.metrics]
    assert [str(m) for m in avalanche_default().metrics] == names[: len(avalanche_default().metrics)]
    assert any(isinstance(m, AnytimeAccuracy) for m in ours.metrics)
    assert [type(lg) for lg in ours.loggers] == [InteractiveLogger]  # not silent


def test_default_evaluator_extra_metrics_and_loggers(tmp_path):
    top5 = TopKAccuracy(5)
    with open(tmp_path / "log.txt", "w") as fh:
        ev = default_evaluator([top5], loggers=[TextLogger(fh)])
        assert top5 in ev.metrics
        assert [type(lg) for lg in ev.loggers] == [TextLogger]
    assert list(default_evaluator(loggers=()).loggers) == []
    assert default_evaluator().metrics[0] is not default_evaluator().metrics[0]  # fresh instances each call
