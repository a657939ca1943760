"""Regression tests for the leftovers of issues 11 and 13 (each failed before its fix)."""

from __future__ import annotations

import pytest
import torch
from avalanche.benchmarks.scenarios import DatasetExperience

from tests.test_templates import _data, _strategy


# ------------------------------------------------------------------ issue 13: shuffle=True on an online stream
def test_online_train_refuses_shuffle_true():
    train = _data()
    s, rec, _ = _strategy(train)
    exp = DatasetExperience(dataset=train, current_experience=0)
    with pytest.raises(ValueError, match="stream order"):
        s.train(exp, eval_streams=[], shuffle=True)
    assert rec.updates == 0  # refused before anything trained
    with pytest.raises(ValueError, match="stream order"):
        s.make_train_dataloader(shuffle=True)
    s.train(exp, eval_streams=[], shuffle=False)  # explicit False (the protocol) is fine
    assert rec.batches[0] == list(train.targets[:8])
