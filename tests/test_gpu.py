"""The CUDA path: smoke configs on ``device=cuda``, TPT's fast path under fp16 (with its loss scaler) and bf16, MVP /
MULTI-LANE / DAM-VP on CUDA in fp32 against the CPU run, the distributed path through NCCL, DiffTPT's diffusion
pipeline on CUDA with its view cache.

Every test is marked ``gpu`` (the default run excludes it: ``python -m pytest -m gpu tests/test_gpu.py``) and is
skipped without CUDA. ``CTTA_GPU_TEST_DEVICE=cpu`` runs the same tests on the CPU (gloo instead of NCCL), which
checks the tests' own logic on a machine without a GPU; it is not a GPU check.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter

import pytest
import torch
import torch.multiprocessing as mp

from tests.helpers import ROOT, SMOKE_CONFIGS, check_contract, free_port, run_contract

DEVICE = os.environ.get("CTTA_GPU_TEST_DEVICE", "cuda")
SMOKE = ROOT / "configs" / "smoke"
COMMON = ["log.progress=false", "log.plot=false"]

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _on_device(t: torch.Tensor) -> bool:
    return t.device.type == torch.device(DEVICE).type


@pytest.fixture
def exact_fp32():
    """fp32 without TF32 (cuDNN convolutions use TF32 by default): the CUDA run is then a float32 computation."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ---------------------------------------------------------------------------------------------- smoke contract
@pytest.mark.parametrize("path", SMOKE_CONFIGS, ids=[p.stem for p in SMOKE_CONFIGS])
def test_smoke_config_contract_on_cuda(path, tmp_path):
    """tests/test_contract.py's contract, run with ``device=cuda`` (default precision: bf16 autocast; TPT fp16)."""
    run = run_contract(path, tmp_path / "run", [f"device={DEVICE}"])  # the last override wins over device=cpu
    check_contract(run)
    ctx = run.ctx
    assert torch.device(ctx.strategy.device).type == torch.device(DEVICE).type
    trainable = [p for p in ctx.strategy.model.parameters() if p.requires_grad]
    assert trainable and all(_on_device(p) for p in trainable)


# ---------------------------------------------------------------------------------------------- TPT fast == slow
NAMES = ["dog", "cat", "great white shark", "golden retriever", "a red sports car", "tree", "bird", "truck"]


@pytest.fixture(scope="module")
def tiny_clip():
    from ctta.backbones.clip import create_clip

    torch.manual_seed(0)
    model, _, tok = create_clip("ctta-tiny-clip", "")
    with torch.no_grad():
        model.logit_scale.fill_(torch.tensor(100.0).log())  # OpenAI CLIP's temperature, as in real runs
    return model.to(DEVICE), tok


@pytest.fixture(scope="module")
def views():
    return torch.randn(5, 16, 3, 32, 32, generator=torch.Generator().manual_seed(3)).to(DEVICE)


def _tune(tiny_clip, views, **kw):
    from ctta.strategies.tpt import PromptTuner, TPTConfig

    model, tok = tiny_clip
    tuner = PromptTuner(model, tok, NAMES, TPTConfig(**kw))
    return tuner, tuner.predict_many(views)


TPT_CASES = [
    (1, dict()),
    (1, dict(episode_batch=3)),
    (1, dict(text_grad="jacobian", episode_batch=3)),
    (2, dict(episode_batch=2, n_buckets=2)),
    (2, dict(step1_graph=False, cache_view_features=False, episode_batch=5)),
]


@pytest.fixture(scope="module")
def fp32_reference(tiny_clip, views):
    """The straightforward path in fp32, per number of steps: the yardstick of half-precision rounding.

    TPT's first AdamW step is ``lr * g / (|g| + eps)``, about ``lr * sign(g)``: a rounding-level change of a small
    gradient element flips a whole step, so in fp16 / bf16 logits move by whole units between any two exact
    computations. The fast path must stay no farther from the straightforward path than the straightforward path
    itself is from its fp32 run.
    """
    cache: dict[int, torch.Tensor] = {}

    def get(steps: int) -> torch.Tensor:
        if steps not in cache:
            cache[steps] = _tune(tiny_clip, views, fast=False, amp="off", tta_steps=steps)[1]
        return cache[steps]

    return get


def _entropies_fp32(tiny_clip, views, i):
    """Step-1 entropies of sample ``i``'s views at the initial context, in fp32 (what the selection ranks)."""
    from ctta.strategies.tpt import PromptTuner, TPTConfig

    from ctta.losses import entropy

    tuner = PromptTuner(*tiny_clip, NAMES, TPTConfig(amp="off"))
    with torch.no_grad():
        return entropy(tuner._logits(tuner.encode_views(views[i]), tuner._text()))


def _assert_same_predictions(tiny_clip, views, fast, out, slow, ref, ref32, amp):
    """Same selected views and predictions, except where the selection met a rounding-level tie; logits no farther
    from the reference than the reference is from its fp32 run."""
    assert torch.isfinite(out).all() and torch.isfinite(ref).all()
    same = (fast.last_selected == slow.last_selected).all(1)
    eps = torch.finfo(torch.float16 if amp == "fp16" else torch.bfloat16).eps
    for i in (~same).nonzero().flatten().tolist():  # the views picked differently have near-equal entropies
        h = _entropies_fp32(tiny_clip, views, i)
        swapped = torch.tensor(sorted(set(fast.last_selected[i].tolist()) ^ set(slow.last_selected[i].tolist())))
        assert h[swapped].max() - h[swapped].min() <= 16 * eps * h.max(), (i, h[swapped])
    assert same.sum() >= len(same) - 1, "more than one rounding-level tie: the paths differ"
    assert torch.equal(out.argmax(-1)[same], ref.argmax(-1)[same])
    assert (out - ref)[same].abs().max() <= (ref - ref32).abs().max() + 1e-3


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
@pytest.mark.parametrize(
    "steps,switches",
    TPT_CASES,
    ids=[f"{s}step-" + (",".join(f"{k}={v}" for k, v in d.items()) or "default") for s, d in TPT_CASES],
)
def test_tpt_fast_equals_straightforward_in_half_precision(tiny_clip, views, fp32_reference, amp, steps, switches):
    """Same predictions, same selected views and the same loss-scaler state as the reference computation."""
    slow, ref = _tune(tiny_clip, views, fast=False, amp=amp, tta_steps=steps)
    fast, out = _tune(tiny_clip, views, amp=amp, tta_steps=steps, **switches)
    expected = torch.float16 if amp == "fp16" else torch.bfloat16
    assert slow.amp_dtype() == fast.amp_dtype() == expected
    assert fast.scaler.mode == slow.scaler.mode == ("shared" if amp == "fp16" else "none")  # the reference's scaler
    assert fast.scaler.state_dict() == slow.scaler.state_dict()
    _assert_same_predictions(tiny_clip, views, fast, out, slow, ref, fp32_reference(steps), amp)
    assert not torch.allclose(fast.last_ctx[0], fast.text.ctx0.cpu())  # the context moved
    assert torch.equal(fast.text.ctx.detach(), fast.text.ctx0)  # and was reset


def test_tpt_fp16_overflow_skips_like_the_reference(tiny_clip, views, fp32_reference):
    """A loss scale that overflows fp16 gradients: the same samples are skipped and the scaler backs off alike."""
    runs = [
        _tune(tiny_clip, views, fast=fast, amp="fp16", init_scale=2.0**40, tta_steps=2, episode_batch=batch)
        for fast, batch in ((False, 1), (True, 1), (True, 3))
    ]
    (slow, ref), others = runs[0], runs[1:]
    assert slow.scaler.state_dict()["scale"] < 2.0**40  # at least one overflow happened
    for tuner, out in others:
        assert tuner.scaler.state_dict() == slow.scaler.state_dict()
        _assert_same_predictions(tiny_clip, views, tuner, out, slow, ref, fp32_reference(2), "fp16")


# ---------------------------------------------------------------------------------------------- CUDA fp32 == CPU
def _assert_close_runs(got: dict, ref: dict, rtol: float, atol: float) -> None:
    assert len(got["losses"]) == len(ref["losses"]) > 0
    torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(ref["losses"]), rtol=rtol, atol=atol)
    assert got["summary"].keys() == ref["summary"].keys()
    for k, v in ref["summary"].items():
        assert got["summary"][k] == pytest.approx(v, abs=1e-4), k
    assert got["state"].keys() == ref["state"].keys()
    for name, v in ref["state"].items():
        torch.testing.assert_close(got["state"][name], v, rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("config", ["mvp_digits", "multilane_synthetic", "damvp_digits"])
def test_fp32_on_cuda_equals_cpu(config, tmp_path, exact_fp32):
    from tests.dist_worker import run_recorded

    path = str(SMOKE / f"{config}.yaml")
    cpu = run_recorded(path, [*COMMON, "device=cpu", "precision=fp32"], str(tmp_path / "cpu"))
    dev = run_recorded(path, [*COMMON, f"device={DEVICE}", "precision=fp32"], str(tmp_path / "dev"))
    _assert_close_runs(dev, cpu, rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------------------------------------- NCCL
def _force_distributed_path(distributed) -> None:
    """Make every ctta module see an active one-rank process group, so the sharded code path runs (shards of the
    whole batch, gathers, the surrogate loss, the gradient all-reduce) and its collectives go through the group."""

    class OneRankGroup(distributed.DistContext):
        @property
        def active(self) -> bool:
            return True

    original = distributed.context

    def context():
        return OneRankGroup(rank=0, world=1, local_rank=0)

    for module in list(sys.modules.values()):  # modules that imported ``context`` by name, ctta.distributed too
        if getattr(module, "context", None) is original:
            module.context = context


def nccl_child(rank: int, port: int, device: str, runs: list, dump: str) -> None:
    """One process: a one-rank NCCL group (gloo on CPU); each config run plainly, then through the sharded path."""
    import torch.distributed as dist

    from ctta import distributed
    from tests.dist_worker import run_recorded

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(0)
    dist.init_process_group(backend, rank=0, world_size=1)
    calls: Counter = Counter()
    for name in ("all_gather", "all_reduce", "broadcast_object_list"):
        fn = getattr(dist, name)

        def counted(*a, _fn=fn, _name=name, **kw):
            calls[_name] += 1
            return _fn(*a, **kw)

        setattr(dist, name, counted)
    try:
        plain = [run_recorded(cfg, overrides, out + "_plain") for cfg, overrides, out in runs]
        assert not calls, f"collectives without the sharded path: {dict(calls)}"
        _force_distributed_path(distributed)
        x = torch.arange(6.0, device=device).view(3, 2)
        gathered = [distributed.all_gather_cat(x), distributed.all_gather_cat(x > 2), distributed.all_gather_cat(x[:0])]
        sharded = [run_recorded(cfg, overrides, out) for cfg, overrides, out in runs]
        record = dict(backend=dist.get_backend(), calls=dict(calls), plain=plain, sharded=sharded, gathered=gathered)
        torch.save({k: (v if k != "gathered" else [g.cpu() for g in v]) for k, v in record.items()}, dump)
    finally:
        dist.destroy_process_group()


def test_distributed_path_through_nccl_in_one_process(tmp_path):
    """Online CL (MVP with replay) and sharded test-time adaptation (TPT) through a one-rank NCCL group equal the
    plain one-process run; the collectives ran (counted) on the NCCL backend."""
    common = [*COMMON, f"device={DEVICE}"]
    runs = [
        (str(SMOKE / "mvp_digits.yaml"), [*common, "strategy.memory_size=60", "strategy.memory_batch_size=7"]),
        (str(SMOKE / "tpt_digits.yaml"), [*common, "scenario.max_samples=11", "strategy.episode_batch=2"]),
    ]
    runs = [(cfg, ovr, str(tmp_path / f"run{i}")) for i, (cfg, ovr) in enumerate(runs)]
    dump = str(tmp_path / "record.pt")
    mp.spawn(nccl_child, args=(free_port(), DEVICE, runs, dump), nprocs=1, join=True)
    rec = torch.load(dump, weights_only=False)
    assert rec["backend"] == ("nccl" if DEVICE.startswith("cuda") else "gloo")
    assert rec["calls"].get("all_gather", 0) > 0 and rec["calls"].get("all_reduce", 0) > 0, rec["calls"]
    x = torch.arange(6.0).view(3, 2)
    assert torch.equal(rec["gathered"][0], x) and torch.equal(rec["gathered"][1], x > 2)
    assert rec["gathered"][2].shape == (0, 2)
    mvp_plain, tpt_plain = rec["plain"]
    mvp_sharded, tpt_sharded = rec["sharded"]
    _assert_close_runs(mvp_sharded, mvp_plain, rtol=1e-4, atol=1e-5)
    assert int(mvp_plain["state"]["mvp.pool.count"].sum()) > 0
    assert tpt_plain["outputs"].shape[0] == tpt_sharded["outputs"].shape[0] == 11
    torch.testing.assert_close(tpt_sharded["outputs"], tpt_plain["outputs"], rtol=1e-4, atol=1e-4)
    assert tpt_sharded["summary"] == pytest.approx(tpt_plain["summary"], abs=1e-6)


# ---------------------------------------------------------------------------------------------- DiffTPT
def test_difftpt_tiny_pipeline_on_cuda_writes_then_rereads_its_cache(tmp_path):
    from ctta.strategies.difftpt.view_cache import ViewCache

    from ctta.runner.config import load_config
    from ctta.runner.run import execute, prepare
    from tests.dist_worker import Recorder

    cache = tmp_path / "views"
    runs = []
    for name in ("first", "second"):
        overrides = [
            *COMMON,
            f"device={DEVICE}",
            f"strategy.diffusion.cache_dir={cache}",
            f"log.out_dir={tmp_path / name}",
        ]
        ctx = prepare(load_config(SMOKE / "difftpt_digits.yaml", overrides))
        rec = Recorder()
        ctx.strategy.plugins.append(rec)
        results = execute(ctx, verbose=False)
        views = ctx.strategy.diffusion_views
        runs.append((views.generated, torch.cat(rec.outputs), results["summary"], views))
    (gen1, out1, sum1, views1), (gen2, out2, sum2, views2) = runs
    n_samples, n_diff = 8, 4  # configs/smoke/difftpt_digits.yaml
    assert gen1 == n_samples * n_diff and gen2 == 0  # the second run generated nothing
    assert views1.device.type == torch.device(DEVICE).type
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    settings = json.loads((folder / "settings.json").read_text())["settings"]
    assert settings["dtype"] == ("float16" if DEVICE.startswith("cuda") else "float32")
    view_cache = ViewCache(cache, settings)
    assert len(view_cache.keys()) == n_samples and not view_cache.verify()  # every file intact
    torch.testing.assert_close(out2, out1, rtol=0, atol=0)  # the cached views are the generated ones
    assert sum2 == sum1
