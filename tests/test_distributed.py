"""Multi-process runs (2 CPU processes, gloo, as under torchrun) equal the one-process run (ctta/distributed.py).

Online CL (MVP with replay, odd batch so shards are uneven; L2P with CutMix): every update's global loss, the final
prompts/head/optimiser-visible state, the pool counts and the anytime metrics match; both ranks hold bitwise
identical parameters. TPT (episodic): per-sample logits gathered in sample order and top-1 match.
"""

from __future__ import annotations

import json

import pytest
import torch

from ctta import distributed
from tests.dist_worker import run_ranks, run_recorded
from tests.helpers import ROOT

SMOKE = ROOT / "configs" / "smoke"
COMMON = ["log.progress=false", "log.plot=false", "device=cpu"]


def _compare(cfg, overrides, tmp_path, world=2):
    single = run_recorded(str(cfg), [*COMMON, *overrides], str(tmp_path / "single"))
    dump = str(tmp_path / "rec")
    run_ranks(world, str(cfg), [*COMMON, *overrides], str(tmp_path / "multi"), dump)
    ranks = [torch.load(f"{dump}.rank{r}", weights_only=False) for r in range(world)]
    return single, ranks


def _assert_same_run(single, ranks):
    for rec in ranks:
        assert len(rec["losses"]) == len(single["losses"])
        torch.testing.assert_close(torch.tensor(rec["losses"]), torch.tensor(single["losses"]), rtol=1e-4, atol=1e-5)
        assert rec["summary"].keys() == single["summary"].keys()
        for k, v in single["summary"].items():
            assert rec["summary"][k] == pytest.approx(v, abs=1e-6), k
        for name, v in single["state"].items():
            torch.testing.assert_close(rec["state"][name], v, rtol=1e-4, atol=1e-5, msg=name)
    for name, v in ranks[0]["state"].items():  # ranks take identical steps from identical summed gradients
        assert torch.equal(ranks[1]["state"][name], v), name


def test_mvp_two_processes_equal_one(tmp_path):
    overrides = [
        "strategy.batch_size=33",  # 33 + 7 replayed = 40 rows per update, shards of 20/20; tail batches uneven
        "strategy.online_iters=2",
        "strategy.eval_every=300",
        "strategy.memory_size=60",
        "strategy.memory_batch_size=7",
    ]
    single, ranks = _compare(SMOKE / "mvp_digits.yaml", overrides, tmp_path)
    assert single["losses"] and single["summary"]
    assert int(single["state"]["mvp.pool.count"].sum()) > 0  # counts advanced by every rank's selections
    _assert_same_run(single, ranks)
    assert (tmp_path / "multi" / "results.json").is_file()  # rank 0 writes the outputs


@pytest.mark.parametrize("name", ["l2p", "dualprompt"])
def test_prompt_er_cutmix_two_processes_equal_one(tmp_path, name):
    overrides = ["strategy.batch_size=31", "strategy.cutmix_prob=1.0", "strategy.eval_every=400"]
    single, ranks = _compare(SMOKE / f"{name}_digits.yaml", overrides, tmp_path)
    _assert_same_run(single, ranks)


@pytest.mark.parametrize("head_mode", ["task", "concat"])
def test_multilane_two_processes_equal_one(tmp_path, head_mode):
    overrides = ["strategy.batch_size=15", f"strategy.head_mode={head_mode}"]  # shuffled epochs, uneven shards
    single, ranks = _compare(SMOKE / "multilane_synthetic.yaml", overrides, tmp_path)
    assert single["losses"] and single["summary"]
    _assert_same_run(single, ranks)


def test_damvp_two_processes_equal_one(tmp_path):
    single, ranks = _compare(SMOKE / "damvp_digits.yaml", [], tmp_path)
    assert single["losses"]
    _assert_same_run(single, ranks)


def test_tpt_two_processes_equal_one(tmp_path):
    overrides = ["scenario.max_samples=11", "strategy.episode_batch=2"]  # 11 samples: the last shard is empty
    single, ranks = _compare(SMOKE / "tpt_digits.yaml", overrides, tmp_path)
    assert single["outputs"].shape[0] == 11
    for rec in ranks:
        torch.testing.assert_close(rec["outputs"], single["outputs"], rtol=1e-4, atol=1e-4)
        assert torch.equal(rec["outputs"].argmax(-1), single["outputs"].argmax(-1))
        assert rec["summary"] == pytest.approx(single["summary"], abs=1e-6)


def test_difftpt_two_processes_share_one_view_cache(tmp_path):
    from ctta.strategies.difftpt.view_cache import ViewCache

    base = ["scenario.max_samples=7", "strategy.episode_batch=2"]
    single = run_recorded(
        str(SMOKE / "difftpt_digits.yaml"), [*COMMON, *base, f"strategy.diffusion.cache_dir={tmp_path / 'c1'}"],
        str(tmp_path / "single"),
    )  # fmt: skip
    dump = str(tmp_path / "rec")
    overrides = [*COMMON, *base, f"strategy.diffusion.cache_dir={tmp_path / 'c2'}"]  # fresh: the ranks generate
    run_ranks(2, str(SMOKE / "difftpt_digits.yaml"), overrides, str(tmp_path / "multi"), dump)
    for r in range(2):
        rec = torch.load(f"{dump}.rank{r}", weights_only=False)
        torch.testing.assert_close(rec["outputs"], single["outputs"], rtol=1e-4, atol=1e-4)
    (folder,) = [p for p in (tmp_path / "c2").iterdir() if p.is_dir()]
    cache = ViewCache(tmp_path / "c2", json.loads((folder / "settings.json").read_text())["settings"])
    assert len(cache.keys()) == 7 and not cache.verify()  # every sample generated once, all files intact
    assert not list(folder.glob("locks/*.lock"))  # every writer lock released


def test_killed_run_resumes_under_two_processes(tmp_path):
    """A one-process run killed mid-stream resumes under 2 processes (rank 0 loads, broadcasts) to the same end."""
    from ctta.runner.config import load_config
    from ctta.runner.run import execute, prepare
    from tests.helpers import Killer

    cfg_path = SMOKE / "l2p_digits.yaml"
    ovr = [*COMMON, "strategy.batch_size=32", "strategy.eval_every=200", "strategy.memory_size=40",
           "strategy.memory_batch_size=8", "log.checkpoint_every=96"]  # fmt: skip
    full = run_recorded(str(cfg_path), ovr, str(tmp_path / "full"))
    part = tmp_path / "part"
    ctx = prepare(load_config(cfg_path, [*ovr, f"log.out_dir={part}"]))
    ctx.strategy.plugins.insert(1, Killer(17))  # after the anytime eval, before the checkpoint plugin
    with pytest.raises(KeyboardInterrupt):
        execute(ctx, verbose=False)
    dump = str(tmp_path / "rec")
    run_ranks(2, str(cfg_path), [*ovr, "resume=true"], str(part), dump)
    for r in range(2):
        rec = torch.load(f"{dump}.rank{r}", weights_only=False)
        assert rec["summary"] == pytest.approx(full["summary"], abs=1e-6)
        for name, v in full["state"].items():
            torch.testing.assert_close(rec["state"][name], v, rtol=1e-4, atol=1e-5, msg=name)


def test_shard_bounds_partition_in_order():
    for n in (0, 1, 5, 64, 97):
        for world in (1, 2, 3, 8):
            bounds = [distributed.shard_bounds(n, r, world) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            sizes = [hi - lo for lo, hi in bounds]
            assert max(sizes) - min(sizes) <= 1


def test_single_process_helpers_are_identity():
    t = torch.randn(3, 2, requires_grad=True)
    assert distributed.all_gather_cat(t) is t
    assert distributed.shard(t) is t
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert not distributed.context().active and distributed.is_main()


def test_continual_tta_refuses_sharding(monkeypatch):
    monkeypatch.setattr(distributed, "context", lambda: distributed.DistContext(rank=0, world=2))
    with pytest.raises(ValueError, match="continual .* cannot be sharded"):
        distributed.require_episodic("TPT", episodic=False)
    distributed.require_episodic("TPT", episodic=True)


def test_unsupported_strategy_is_refused_under_torchrun(monkeypatch):
    from ctta.strategies.vpt import VPT

    from ctta.runner.config import load_config
    from ctta.runner.run import prepare

    monkeypatch.setattr(distributed, "init_from_env", lambda device: distributed.DistContext(rank=0, world=2))
    monkeypatch.setattr(VPT, "distributed_ok", False)  # a strategy that has not declared multi-process support
    cfg = load_config(SMOKE / "vpt_digits.yaml", COMMON)
    with pytest.raises(ValueError, match="does not support multi-process runs"):
        prepare(cfg)


def test_init_from_env_needs_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for k in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        distributed.init_from_env("cpu")
