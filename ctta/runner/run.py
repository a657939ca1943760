"""One run: check the output folder -> seed -> scenario -> backbone -> strategy -> stream loop -> results.

The output folder is checked before anything loads (``ctta.runner.outdir``); ``resume=true`` restores only a
checkpoint whose fingerprint (resolved config minus output-only keys, package versions, data identity) matches
this run's (``ctta.runner.checkpoint``); a non-finite loss stops the run as ``"status": "diverged"``
(``ctta.runner.guards``).
"""

from __future__ import annotations

import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ctta import distributed
from ctta.evaluation import ProgressPlugin, anytime_metric, close_loggers, make_evaluator
from ctta.metrics import SummaryMetric
from ctta.registry import BACKBONES, SCENARIOS, STRATEGIES
from ctta.runner.checkpoint import CheckpointPlugin, run_fingerprint, scan_checkpoints
from ctta.runner.config import RunConfig, to_dict
from ctta.runner.guards import DivergenceError, DivergenceGuard, check_class_count, warn_batch_exceeds_experiences
from ctta.runner.outdir import RunError, abandon, begin, check_out_dir, finish
from ctta.runner.results import epoch_metrics, fewshot_rows, package_versions, write_artifacts, write_results
from ctta.utils import resolve_device, seed_everything


def build_strategy(cfg: RunConfig, bench, backbone, evaluator=None, plugins=()):
    """Build the configured strategy over an already built benchmark and backbone."""
    return STRATEGIES.get(cfg.strategy.name).builder.from_config(
        cfg.strategy.params,
        backbone=backbone,
        benchmark=bench,
        device=resolve_device(cfg.device),
        evaluator=evaluator if evaluator is not None else make_evaluator(),
        plugins=list(plugins),
        precision=cfg.precision,
    )


def _stream_size(stream) -> int:
    return sum(len(exp.dataset) for exp in stream)


@dataclass
class RunContext:
    """Everything one run builds (returned by ``prepare`` so tests and scripts can inspect it)."""

    cfg: RunConfig
    out: Path
    bench: Any
    backbone: Any
    strategy: Any
    evaluator: Any
    progress: ProgressPlugin
    is_tta: bool
    t0: float
    start_exp: int = 0  # first experience to run (> 0 when resuming)
    outputs: bool = True  # this process writes the run's outputs (rank 0, not ``ctta generate``)


def _not_resumable(cfg: RunConfig) -> str | None:
    """Why ``resume=true`` cannot continue this run's strategy (``None``: it can)."""
    if STRATEGIES.get(cfg.strategy.name).builder.resumable:
        return None
    return f"resume=true is supported for online continual learning, not {cfg.strategy.name!r}"


def prepare(cfg: RunConfig, outputs: bool = True, label: str | None = None) -> RunContext:
    """Check the output folder, seed, write the resolved config, build benchmark, backbone, evaluator and strategy.

    Under torchrun (``WORLD_SIZE`` > 1) the process group is joined first; every rank uses the same seed (same
    stream, augmentation and replay draws) and only rank 0 writes outputs, logs, checkpoints and the progress bar.
    ``outputs=False`` (``ctta generate``) leaves the output folder alone; ``label`` names the progress bar (default:
    the strategy's name).
    """
    t0 = time.perf_counter()
    check_device(cfg.device)
    check_image_size(cfg)
    check_class_count(cfg)
    # user-supplied files (description banks, replay logs, model folders): before data, weights and the folder
    STRATEGIES.get(cfg.strategy.name).builder.check_resources(cfg.strategy.params)
    out = Path(cfg.log.out_dir)
    if outputs:  # before anything loads: a folder we may write, no earlier run to overwrite, a resumable match
        check_out_dir(out, resume=cfg.resume, overwrite=cfg.overwrite, resumable=lambda: _not_resumable(cfg))
        if cfg.resume:
            _check_resumable(cfg, out / "checkpoints", run_fingerprint(cfg), partial=True)
    dctx = distributed.init_from_env(cfg.device)
    strategy_cls = STRATEGIES.get(cfg.strategy.name).builder
    if dctx.active and not strategy_cls.distributed_ok:
        raise ValueError(
            f"strategy {cfg.strategy.name!r} does not support multi-process runs (WORLD_SIZE={dctx.world}); "
            f"run it in one process (supported: online continual learning and episodic test-time strategies)"
        )
    if cfg.resume and (why_not := _not_resumable(cfg)):
        raise RunError(why_not)
    distributed.barrier()  # every rank has checked the folder before rank 0 writes into it
    seed_everything(cfg.seed)
    run_id = uuid.uuid4().hex
    main = dctx.main and outputs
    started = begin(out, cfg, run_id, overwrite=cfg.overwrite) if main else None
    try:
        return _build(cfg, strategy_cls, out, run_id, main, dctx.main, t0, label)
    except BaseException:
        if started is not None:  # failed before training: leave the folder as it was found
            abandon(started)
        raise


def _build(cfg: RunConfig, strategy_cls, out: Path, run_id: str, main: bool, is_main_rank: bool, t0: float, label=None):
    """Build evaluator, benchmark, backbone, plugins and strategy; resume if asked."""
    extra = strategy_cls.extra_metrics(cfg.strategy.params)
    if strategy_cls.records_epochs:  # CLIP prompt learners (few-shot epochs): loss and top-1 per epoch
        extra = (*extra, *epoch_metrics())
    evaluator = make_evaluator(out if main else None, cfg.log.interactive and main, extra, cfg.log.f_last_variant,
                               loggers=cfg.log.loggers if main else ())  # fmt: skip
    bench = SCENARIOS.get(cfg.scenario.name).builder(cfg.scenario.params, seed=cfg.seed)
    backbone = BACKBONES.get(cfg.backbone.name).builder(cfg.backbone.params)
    # test-time adaptation, or a zero-shot method on a benchmark without train stream: evaluate the test stream
    is_tta = strategy_cls.adapts_in_eval or (strategy_cls.zero_shot and not len(bench.train_stream))
    stream = bench.test_stream if is_tta else bench.train_stream
    progress = ProgressPlugin(_stream_size(stream), label or cfg.strategy.name, train=not is_tta,
                              enabled=cfg.log.progress and is_main_rank)  # fmt: skip
    plugins: list[Any] = [DivergenceGuard(), progress]
    checkpoints = cfg.log.checkpoint_every > 0 and not is_tta
    fingerprint = run_fingerprint(cfg, bench.train_stream) if (checkpoints or cfg.resume) and not is_tta else None
    if checkpoints and main:
        plugins.append(CheckpointPlugin(out / "checkpoints", cfg.log.checkpoint_every, run_id=run_id,
                                        fingerprint=fingerprint))  # fmt: skip
    strategy = build_strategy(cfg, bench, backbone, evaluator, plugins)
    if not is_tta:  # epoch templates pass over the stream train_epochs times (online ones once)
        progress.bar.total = _stream_size(stream) * max(1, int(strategy.train_epochs))
    if not is_tta and is_main_rank:
        warn_batch_exceeds_experiences(strategy, stream)
    ctx = RunContext(cfg, out, bench, backbone, strategy, evaluator, progress, is_tta, t0, outputs=main)
    if cfg.resume:
        _resume(ctx, fingerprint)
    return ctx


def check_device(device: str) -> None:
    """Raise ``RunError`` (before anything loads) when ``device`` does not exist on this machine."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RunError(f"device={device} but CUDA is not available on this machine; use device=cpu or device=auto")
        index = int(device.split(":")[1]) if ":" in device else 0
        n = torch.cuda.device_count()
        if index >= n:
            raise RunError(
                f"device={device} but this machine has {n} CUDA device(s); use device=cuda:0 .. cuda:{n - 1}, "
                f"device=cpu or device=auto"
            )
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RunError("device=mps but MPS is not available on this machine; use device=cpu or device=auto")


_SCENARIO_SIZE_KEYS = ("resolution", "img_size", "image_size")


def _vit_image_size(bp) -> int | None:
    """The input side of the configured timm ViT (or ``ctta-tiny-vit``), from its config alone; None if unknown."""
    if bp.model == "ctta-tiny-vit":  # fixed architecture: an img_size override is refused when it builds
        from ctta.pretrained.archs import VIT_ARCH

        return int(VIT_ARCH["img_size"])
    if getattr(bp, "img_size", None):
        return int(bp.img_size)
    import timm

    pc = timm.get_pretrained_cfg(bp.model) if timm.is_model(bp.model.split(".")[0]) else None
    return int(pc.input_size[-1]) if pc is not None and pc.input_size else None


def _backbone_image_size(cfg: RunConfig) -> int | None:
    """The input side the configured backbone takes, from its config alone (no weights load); None if unknown."""
    if cfg.backbone.name == "vit":
        return _vit_image_size(cfg.backbone.params)
    if cfg.backbone.name == "clip":
        from ctta.backbones.clip import clip_image_size

        return clip_image_size(cfg.backbone.params.model)
    return None


def check_image_size(cfg: RunConfig) -> None:
    """Raise ``RunError`` (before data and weights load) when the scenario's images cannot enter the backbone.

    Timm ViTs (``backbone.img_size`` or the weight tag's input size), ``ctta-tiny-vit`` and CLIP image towers
    (open_clip's model config, ctta's tiny CLIPs) have a fixed input side; a backbone of unknown size passes.
    """
    key = next((k for k in _SCENARIO_SIZE_KEYS if getattr(cfg.scenario.params, k, None)), None)
    if key is None:
        return
    side, takes = int(getattr(cfg.scenario.params, key)), _backbone_image_size(cfg)
    if takes is None or side == takes:
        return
    model = cfg.backbone.params.model
    resizable = cfg.backbone.name == "vit" and model != "ctta-tiny-vit"
    alt = f"backbone.img_size={side}" if resizable else f"a backbone.model that takes {side}-px images"
    raise RunError(
        f"scenario.{key}={side} but the {cfg.backbone.name} backbone {model} takes {takes}-px "
        f"images; set scenario.{key}={takes} or {alt}"
    )


def _fmt(v: Any) -> str:
    return "(unset)" if v is None else repr(v) if isinstance(v, str) else str(v)


def _check_resumable(cfg: RunConfig, directory: Path, fingerprint: dict, partial: bool = False, scan=None):
    """Raise ``RunError`` when checkpoints exist but none matches ``fingerprint`` or none is readable.

    ``partial``: compare only the keys of ``fingerprint`` (the config and versions, before the data is built) and
    read only the checkpoints' records. Returns the scan (None when there is no checkpoint at all).
    """
    scan = scan or scan_checkpoints(directory, fingerprint, partial=partial)
    if scan.found or scan.matching or not (scan.mismatched or scan.unreadable):
        return scan
    if scan.mismatched:
        path, diff = max(scan.mismatched, key=lambda m: m[0].stat().st_mtime)
        keys = "; ".join(f"{k}: {_fmt(a)} there, {_fmt(b)} now" for k, (a, b) in list(diff.items())[:8])
        more = f" (+{len(diff) - 8} more)" if len(diff) > 8 else ""
        raise RunError(
            f"resume=true: no checkpoint under {directory} matches this run; the newest ({path.name}) differs in "
            f"{keys}{more}. To resume that run, rerun it with its values (recorded in {path.stem}.json); "
            f"to start this run, choose another log.out_dir (or overwrite=true without resume; checkpoints are kept)"
        )
    listed = ", ".join(f"{p.name} ({why})" for p, why in scan.unreadable)
    raise RunError(
        f"resume=true: every checkpoint under {directory} is unreadable: {listed}; they are kept. To start this run "
        f"fresh, run without resume=true and with overwrite=true, or choose another log.out_dir"
    )


def _resume(ctx: RunContext, fingerprint: dict | None) -> None:
    """Restore the matching checkpoint with the most recorded progress (fresh start if there is no checkpoint)."""
    if not ctx.strategy.resumable:
        raise RunError(f"resume=true is supported for online continual learning, not {ctx.cfg.strategy.name!r}")
    directory = ctx.out / "checkpoints"
    scan = scan_checkpoints(directory, fingerprint) if distributed.is_main() else None
    scan = distributed.broadcast_object(scan)  # every rank resumes from rank 0's checkpoint
    _check_resumable(ctx.cfg, directory, fingerprint, scan=scan)
    if not scan.found:
        warnings.warn(f"resume=true but no checkpoint under {directory}; starting fresh", stacklevel=2)
        return
    ctx.start_exp = ctx.strategy.load_checkpoint_state(scan.state, ctx.bench.train_stream)
    ctx.progress.bar.update(ctx.strategy.seen_samples)
    for p in ctx.strategy.plugins:  # the resumed run continues the run that wrote the checkpoint
        if isinstance(p, CheckpointPlugin) and scan.run_id:
            p.run_id = scan.run_id
    if distributed.is_main():
        print(f"resumed from {scan.path} ({ctx.strategy.seen_samples} stream samples done)")


def execute(ctx: RunContext, verbose: bool = True) -> dict[str, Any]:
    """Run the stream loop of a prepared run and write its outputs; returns the results dict."""
    t_loop = time.perf_counter()
    diverged: DivergenceError | None = None
    try:
        _loop(ctx.strategy, ctx.bench, ctx.is_tta, ctx.start_exp)
    except DivergenceError as e:  # recorded as a result (status "diverged"), then reported by the caller
        diverged = e
    finally:
        ctx.progress.close()
        close_loggers(ctx.evaluator)
    now = time.perf_counter()
    timings = {"setup_s": t_loop - ctx.t0, "stream_s": now - t_loop, "total_s": now - ctx.t0}
    sizes = [len(exp.dataset) for exp in ctx.bench.test_stream] if ctx.is_tta else None
    results = summarise(ctx.cfg, ctx.strategy, ctx.evaluator, ctx.progress, timings, sizes)
    results["status"] = "diverged" if diverged else "finished"
    if diverged:
        results["divergence"] = diverged.as_dict()
    rows = results.pop("_rows")
    if distributed.is_main() and ctx.outputs:
        artifacts = write_artifacts(ctx.out, ctx.strategy, plot=ctx.cfg.log.plot)
        if artifacts:  # a strategy without artifacts leaves results.json as it was
            results["artifacts"] = artifacts
        write_results(ctx.out, results, rows, plot=ctx.cfg.log.plot)
        finish(ctx.out)
        if verbose and not diverged:
            print(format_summary(results, ctx.out))
    distributed.barrier()
    if diverged:
        raise diverged
    return results


def run(cfg: RunConfig, verbose: bool = True) -> dict[str, Any]:
    """Run ``cfg`` end to end and write its outputs; returns the results dict (also saved as results.json)."""
    return execute(prepare(cfg), verbose)


def _loop(strategy, bench, is_tta: bool, start_exp: int = 0) -> None:
    if is_tta:
        for exp in bench.test_stream:
            strategy.eval(exp)
        return
    for i, exp in enumerate(bench.train_stream):
        if i < start_exp:
            continue
        strategy.train(exp, eval_streams=[])
        strategy.eval_after_experience(bench, i)


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1):
            out[k] = float(v)
    return out


def _pooled_stream_metrics(evaluator, summary: dict[str, float], sizes: list[int]) -> dict[str, float]:
    """Whole-stream top-1 / top-k of a test-time run that evaluated its experiences one ``eval`` call each.

    Each call emits stream metrics over that experience only; the run's value is their mean weighted by the
    experience sizes (the accuracy over every sample), not the last experience's.
    """
    pooled = {}
    history = evaluator.get_all_metrics()
    for key, name in (
        ("top1", "Top1_Acc_Stream/eval_phase/test_stream"),
        ("top5", "Top5_Acc_Stream/eval_phase/test_stream"),
    ):
        values = history.get(name, ([], []))[1]
        if key in summary and len(values) == len(sizes):
            pooled[key] = sum(float(v) * n for v, n in zip(values, sizes)) / sum(sizes)
    return pooled


def summarise(
    cfg: RunConfig, strategy, evaluator, progress: ProgressPlugin, timings: dict, test_sizes: list[int] | None = None
) -> dict[str, Any]:
    """Final metrics, evaluation history rows, config, versions, weight tags and timings.

    ``test_sizes``: a test-time run's experience sizes (its experiences are evaluated one call each).
    """
    m = anytime_metric(evaluator)
    rows: list[dict[str, Any]] = []
    summary: dict[str, float] = {}
    if m is not None:
        rows += [{"kind": "periodic", "samples": x, "accuracy": a} for x, a in m.periodic]
        rows += [{"kind": "task_end", "samples": x, "accuracy": a} for x, a in m.task_end]
        rows.sort(key=lambda r: (r["samples"], r["kind"] == "task_end"))
        summary.update(m.result())
    rows += progress_rows(progress) + fewshot_rows(evaluator)
    for metric in evaluator.metrics:  # metrics marked SummaryMetric summarise themselves (top-5, mAP, CF1, OF1, ...)
        if metric is not m and isinstance(metric, SummaryMetric):
            res = metric.result()
            if isinstance(res, dict):
                summary.update(_scalar_metrics(res))
            elif isinstance(res, (int, float)) or (isinstance(res, torch.Tensor) and res.numel() == 1):
                summary[metric.summary_name()] = float(res)
    last = _scalar_metrics(evaluator.get_last_metrics())
    top1 = [v for k, v in last.items() if k.startswith("Top1_Acc_Stream/eval_phase/test_stream")]
    if top1 and "mAP" not in summary and "map_at_r" not in summary:  # argmax top-1: meaningless for multi-hot
        # targets and for retrieval embeddings of unseen classes
        summary.setdefault("top1", top1[-1])
    if test_sizes is not None and len(test_sizes) > 1:  # one eval call per experience: pool them, not the last
        summary |= _pooled_stream_metrics(evaluator, summary, test_sizes)
    bb = to_dict(cfg.backbone)
    return {
        "title": f"{cfg.strategy.name} on {cfg.scenario.name} (seed {cfg.seed})",
        "summary": summary,
        "last_metrics": last,
        "config": to_dict(cfg),
        "seed": cfg.seed,
        "weights": {k: bb.get(k) for k in ("name", "model", "pretrained") if k in bb},
        "versions": package_versions(),
        "device": str(resolve_device(cfg.device)),
        "world_size": distributed.world_size(),
        "timings": timings,
        "_rows": rows,
    }


def progress_rows(progress: ProgressPlugin) -> list[dict[str, Any]]:
    return [{"kind": "sample", "samples": n, "accuracy": a} for n, a in progress.curve]


def format_summary(results: dict[str, Any], out: Path) -> str:
    s = results["summary"]
    parts = [f"{k}={100 * v:.2f}" for k, v in s.items()]
    t = results["timings"]["total_s"]
    return (
        f"{results['title']}: "
        + (", ".join(parts) if parts else "no metrics")
        + f"  ({t:.1f}s)\nwrote {out}/results.json, metrics.csv, accuracy.png, config.yaml"
    )
