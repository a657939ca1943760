"""Checkpoint/resume: a run killed mid-stream and resumed ends with the uninterrupted run's metrics; a truncated
checkpoint is detected and the previous one is used.

The default suite keeps one kill/resume case per mechanism: VPT (prompt, head and optimiser state) killed at a
random batch, L2P with replay (the replay memory too) killed inside an experience (the data iterator's seed draw
replays); the other two combinations are ``slow`` (``-m slow``). tests/test_distributed.py resumes under two
processes.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from ctta.runner.checkpoint import load_latest, save_checkpoint
from ctta.runner.config import load_config
from ctta.runner.run import execute, prepare
from tests.helpers import SMOKE, Killer

CFG = SMOKE / "vpt_digits.yaml"
OVR = [
    "log.progress=false",
    "log.plot=false",
    "device=cpu",
    "strategy.batch_size=32",
    "strategy.eval_every=200",
    "strategy.online_iters=2",
    "log.checkpoint_every=96",
]


def _summary(out):
    return json.loads((out / "results.json").read_text())["summary"]


L2P = (SMOKE / "l2p_digits.yaml", ["strategy.memory_size=40", "strategy.memory_batch_size=8"])
SLOW = [pytest.mark.slow]


@pytest.mark.parametrize(
    "cfg_path,extra,kill",
    [
        pytest.param(CFG, [], "random", id="random-vpt"),
        pytest.param(*L2P, "mid-experience", id="mid-experience-l2p-replay"),
        pytest.param(CFG, [], "mid-experience", id="mid-experience-vpt", marks=SLOW),
        pytest.param(*L2P, "random", id="random-l2p-replay", marks=SLOW),
    ],
)
def test_killed_run_resumes_to_identical_metrics(tmp_path, cfg_path, extra, kill):
    full = tmp_path / "full"
    ovr = [*OVR, *extra]
    full_ctx = prepare(load_config(cfg_path, [*ovr, f"log.out_dir={full}"]))
    execute(full_ctx, verbose=False)
    part = tmp_path / "part"
    cfg = load_config(cfg_path, [*ovr, f"log.out_dir={part}"])
    ctx = prepare(cfg)
    n_batches = sum(-(-len(e.dataset) // 32) for e in ctx.bench.train_stream)
    # batch 17: the newest checkpoint then lies inside an experience (the data iterator's seed draw must replay)
    kill_at = random.Random(0).randrange(4, n_batches - 2) if kill == "random" else 17
    ctx.strategy.plugins.insert(1, Killer(kill_at))  # after the anytime eval, before the checkpoint plugin
    with pytest.raises(KeyboardInterrupt):
        execute(ctx, verbose=False)
    assert list((part / "checkpoints").glob("ckpt-*.pt"))
    resumed_ctx = prepare(load_config(cfg_path, [*ovr, f"log.out_dir={part}", "resume=true"]))
    resumed = execute(resumed_ctx, verbose=False)
    want = _summary(full)
    assert resumed["summary"].keys() == want.keys()
    for k, v in want.items():
        assert resumed["summary"][k] == pytest.approx(v, abs=1e-6), k
    params = dict(resumed_ctx.strategy.model.named_parameters())
    for name, p in full_ctx.strategy.model.named_parameters():  # the very same parameters, not only metrics
        assert torch.equal(params[name], p), name


def test_truncated_checkpoint_falls_back_to_previous(tmp_path):
    save_checkpoint(tmp_path, {"x": torch.arange(3)}, step=10)
    newest = save_checkpoint(tmp_path, {"x": torch.arange(5)}, step=20)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint"):
        state, path = load_latest(tmp_path)
    assert path.name.startswith("ckpt-000000000010") and torch.equal(state["x"], torch.arange(3))


def test_keep_prunes_old_checkpoints_and_missing_dir(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, {"s": step}, step=step, keep=2)
    assert len(list(tmp_path.glob("ckpt-*.pt"))) == 2
    assert load_latest(tmp_path / "nothing") is None
