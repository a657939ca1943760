"""Runner outputs: ``log.loggers`` (text, csv, tensorboard, interactive) and ctta's extra metrics in results.json."""

from __future__ import annotations

import json

import pytest

from ctta.evaluation import LOGGER_NAMES
from ctta.runner.config import ConfigError, LogConfig, load_config
from ctta.runner.run import run
from tests.helpers import ROOT

TPT = ROOT / "configs" / "smoke" / "tpt_digits.yaml"
FAST_TPT = ["device=cpu", "log.progress=false", "log.plot=false", "scenario.max_samples=8"]


def test_logger_choices_match_the_config_schema():
    assert LogConfig().loggers == ("text",)
    cfg = load_config(TPT, ["log.loggers=[csv, tensorboard, interactive, text]"])
    assert cfg.log.loggers == ("csv", "tensorboard", "interactive", "text")
    assert set(LOGGER_NAMES) == {"text", "csv", "tensorboard", "interactive"}


def test_unknown_logger_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"log\.loggers\[1\]: 'wandb' is not one of \['text', 'csv', 'tensorb"):
        load_config(TPT, ["log.loggers=[text, wandb]"])


def test_csv_and_tensorboard_loggers_write_files_and_top5_reaches_results(tmp_path):
    cfg = load_config(TPT, [*FAST_TPT, f"log.out_dir={tmp_path}", "log.loggers=[text, csv, tensorboard]"])
    results = run(cfg, verbose=False)
    assert (tmp_path / "log.txt").stat().st_size > 0
    eval_csv = (tmp_path / "csv" / "eval_results.csv").read_text().splitlines()
    assert eval_csv[0].startswith("eval_exp,training_exp,eval_accuracy") and len(eval_csv) > 1
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    saved = json.loads((tmp_path / "results.json").read_text())
    # TPT's top-5 (a ctta metric with a single value) used to be dropped from the summary
    assert "top5" in saved["summary"] and saved["summary"]["top5"] == pytest.approx(results["summary"]["top5"])
    assert saved["summary"]["top1"] <= saved["summary"]["top5"] <= 1.0
    assert saved["summary"]["top5"] == pytest.approx(saved["last_metrics"]["Top5_Acc_Stream/eval_phase/test_stream"])


def test_no_loggers_writes_no_log_files(tmp_path):
    run(load_config(TPT, [*FAST_TPT, f"log.out_dir={tmp_path}", "log.loggers=[]"]), verbose=False)
    assert not (tmp_path / "log.txt").exists() and not (tmp_path / "csv").exists()
    assert (tmp_path / "results.json").is_file()


def test_multi_experience_test_time_run_pools_its_experiences():
    from ctta.runner.run import _pooled_stream_metrics

    class Evaluator:
        def get_all_metrics(self):
            return {
                "Top1_Acc_Stream/eval_phase/test_stream": ([0, 0], [0.5, 0.25]),
                "Top5_Acc_Stream/eval_phase/test_stream": ([0, 0], [1.0, 0.5]),
            }

    # the last experience's values were reported as the run's before
    pooled = _pooled_stream_metrics(Evaluator(), {"top1": 0.25, "top5": 0.5}, [10, 30])
    assert pooled == {"top1": pytest.approx(0.3125), "top5": pytest.approx(0.625)}
    assert _pooled_stream_metrics(Evaluator(), {"top1": 0.25}, [10, 20, 30]) == {}  # calls != experiences: unchanged


def test_domain_sequence_top1_counts_every_sample(tmp_path):
    cfg = load_config(TPT, [*FAST_TPT, f"log.out_dir={tmp_path}", "scenario.datasets=[digits, digits]"])
    from ctta.runner.run import execute, prepare

    ctx = prepare(cfg)
    assert len(ctx.bench.test_stream) == 2
    results = execute(ctx, verbose=False)
    assert results["summary"]["top1"] == pytest.approx(ctx.progress._correct / ctx.progress._n)
