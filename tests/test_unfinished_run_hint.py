"""A run killed half-way leaves an unfinished output folder; rerunning it names what works. For a strategy that
cannot resume (GRAM, the zero-shot and search strategies) the message offered ``resume=true``, which then failed
with a second error; it now offers ``overwrite=true`` and says why resuming is not possible."""

import json

import pytest

from ctta.runner.config import load_config
from ctta.runner.outdir import RunError, check_out_dir
from ctta.runner.run import prepare


def _unfinished(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "running.json").write_text(json.dumps({"run_id": "x", "pid": 1, "host": "h", "started": 0.0}))
    return out


def test_unfinished_run_of_a_non_resumable_strategy_offers_overwrite_only(tmp_path):
    out = _unfinished(tmp_path)
    cfg = load_config("configs/smoke/gram_digits.yaml", [f"log.out_dir={out}"])
    with pytest.raises(RunError) as err:
        prepare(cfg)
    msg = str(err.value)
    assert "holds an unfinished run" in msg and "overwrite=true starts over" in msg
    assert "resume=true resumes it" not in msg and "not 'gram'" in msg


def test_unfinished_run_of_a_resumable_strategy_still_offers_resume(tmp_path):
    out = _unfinished(tmp_path)
    with pytest.raises(RunError, match="resume=true resumes it"):
        check_out_dir(out, resumable=lambda: None)
    with pytest.raises(RunError, match="resume=true resumes it"):
        check_out_dir(out)  # no strategy to ask: as before
    cfg = load_config("configs/smoke/mvp_digits.yaml", [f"log.out_dir={out}"])
    with pytest.raises(RunError, match="resume=true resumes it"):
        prepare(cfg)
