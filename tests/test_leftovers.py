"""Regression tests for the leftovers of issues 11 and 13 (each failed before its fix)."""

from __future__ import annotations

import pytest
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


# ------------------------------------------------------------------ issue 13: DiffTPT view-cache messages
def test_corrupt_settings_json_is_reported_as_corrupt_with_the_command_line_key(tmp_path):
    from ctta.strategies.difftpt.view_cache import CacheCorruptError, CacheMismatchError, ViewCache

    settings = {"model": "tiny", "steps": 2}
    cache = ViewCache(tmp_path, settings)
    path = cache.dir / "settings.json"
    path.write_text('{"digest": "abc", "settings": {"model": ')  # truncated write
    with pytest.raises(CacheCorruptError) as err:
        ViewCache(tmp_path, settings)
    msg = str(err.value)
    assert f"corrupt/unreadable settings.json at {path}" in msg and "differ" not in msg
    assert "strategy.diffusion.on_mismatch=regenerate" in msg
    path.write_text('["not", "a", "record"]')
    with pytest.raises(CacheCorruptError, match="corrupt/unreadable settings.json"):
        ViewCache(tmp_path, settings)
    path.write_text('{"digest": "abc", "settings": {"model": "other", "steps": 2}}')  # a real mismatch
    with pytest.raises(CacheMismatchError, match="differ") as err:
        ViewCache(tmp_path, settings)
    assert "strategy.diffusion.on_mismatch=regenerate" in str(err.value)
    path.write_text("{")
    again = ViewCache(tmp_path, settings, on_mismatch="regenerate")  # corrupt file set aside, folder rebuilt
    assert again.dir.is_dir() and (again.dir / "settings.json").is_file()


def test_difftpt_messages_print_keys_as_set_on_the_command_line():
    import re
    from pathlib import Path

    import ctta.strategies.difftpt as pkg

    folder = Path(pkg.__file__).parent
    for name in ("view_cache.py", "diffusion.py", "strategy.py", "config.py"):
        text = (folder / name).read_text()
        bare = [m.group(0) for m in re.finditer(r"(?<![\w.])diffusion\.[a-z_]+=", text)]
        assert not bare, (name, bare)  # every fix key reads strategy.diffusion.<field>=
