"""A replay log path that names a folder fails with one message saying to pass the JSONL file (was a bare
IsADirectoryError traceback from ``Path.read_bytes``)."""

import pytest

from ctta.llm import ReplayLog, make_llm


def test_a_folder_as_replay_log_names_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"is a folder: pass a JSONL log file"):
        make_llm("replay", tmp_path)
    with pytest.raises(ValueError, match=r"is a folder"):
        ReplayLog(tmp_path)
