"""``ctta run`` with a replay log that lacks a request (here: the last record cut off, as a run killed mid-write
leaves it) prints the documented one-line ``LLMReplayMissing`` message and exits with code 2 (was a traceback,
exit code 1: ``LLMReplayMissing`` is a ``LookupError``, outside the CLI's user errors)."""

from pathlib import Path

from ctta.runner.cli import main

LOG = Path("configs/smoke/llm_logs/ipo_digits.jsonl")


def test_missing_replay_answer_is_one_line_exit_2(tmp_path, capsys):
    lines = LOG.read_bytes().split(b"\n")
    log = tmp_path / "killed.jsonl"
    log.write_bytes(b"\n".join(lines[:3]) + b"\n" + lines[3][:50])  # the fourth record killed mid-write
    rc = main(["run", "configs/smoke/ipo_digits.yaml", f"strategy.llm_log={log}", f"log.out_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" not in err
    (line,) = [s for s in err.splitlines() if s.startswith("ctta: replay log")]
    assert f"{log} has no answer for request" in line and "record it with a live backend" in line
    assert "truncated last line" in err  # the killed record was ignored with a warning


def test_unloadable_hf_model_is_one_line_exit_2(tmp_path, capsys):
    """``strategy.llm=hf:<folder>`` naming no model: one line saying to pass a local folder (was an ``OSError``
    traceback, exit code 1)."""
    import pytest

    pytest.importorskip("transformers")
    rc = main(["run", "configs/smoke/ipo_digits.yaml", f"strategy.llm=hf:{tmp_path / 'no-model'}",
               f"strategy.llm_log={tmp_path / 'new.jsonl'}", f"log.out_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert any(s.startswith("ctta: hf:") and "pass a local folder holding it" in s for s in err.splitlines())
