"""Command line: ``ctta run CONFIG [key=value ...]``, ``ctta demo``, ``ctta generate CONFIG``, ``ctta list``,
``ctta explain CONFIG`` (Prompt-CAM trait maps)."""

from __future__ import annotations

import argparse
import sys
import warnings


def _load(path, overrides):
    """The validated config (a ``ConfigError`` reaches ``main``, which prints it without a traceback).

    Config errors that need no component (YAML syntax, unknown keys and names, ranges of run-level keys,
    ``device=cuda`` without CUDA) are found before torch and Avalanche load (``config.precheck``).
    """
    from ctta.runner.config import load_config

    return load_config(path, overrides)


def _cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args.config, args.overrides)  # before the run loop's imports: config errors come in a second
    from ctta.runner.run import run

    run(cfg)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """``ctta demo [cl|tta|fewshot] [key=value ...]``: the embedded defaults on the shipped pretrained tiny
    backbones."""
    from ctta.runner.config import ConfigError
    from ctta.runner.demo import demo_main

    words = list(args.overrides)
    kind = words.pop(0) if words and "=" not in words[0] else "cl"
    if kind not in ("cl", "tta", "fewshot"):
        raise ConfigError(f"ctta demo takes 'cl' (default), 'tta' or 'fewshot' and key=value overrides, got {kind!r}")
    return demo_main(kind, words)


def _cmd_generate(args: argparse.Namespace) -> int:
    """Pre-generate cached views (DiffTPT) for a config; shards by torchrun's RANK / WORLD_SIZE."""
    import os

    cfg = _load(args.config, args.overrides)
    from ctta.runner.run import prepare

    ctx = prepare(cfg, outputs=False)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    n = ctx.strategy.pregenerate(ctx.bench.test_stream, rank=rank, world_size=world)  # None: nothing to generate
    if n is None:
        print(f"ctta: strategy {cfg.strategy.name!r} has nothing to pre-generate", file=sys.stderr)
        return 2
    print(f"generated {n} images (rank {rank} of {world}); cached views are reused by `ctta run`")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    """Prompt-CAM trait maps of a config's test images (``ctta.runner.explain``)."""
    cfg = _load(args.config, args.overrides)
    from ctta.runner.explain import explain_run

    recs = explain_run(cfg, args.checkpoint, args.images, args.out, args.top_traits)
    print("\n".join(f"{r['file']}: class {r['target']} (p={r['prob']:.2f}), heads {r['heads']}" for r in recs))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    """Components, datasets and shipped backbones, one line each, read without importing torch (``ctta.listing``)."""
    from ctta.runner.listing import listing

    print(listing())
    return 0


def make_parser() -> argparse.ArgumentParser:
    from ctta.runner.config import run_keys_help

    p = argparse.ArgumentParser(prog="ctta", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show the full traceback of errors")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser(
        "run",
        help="run a YAML config; key=value pairs override it (e.g. strategy.lr=0.01)",
        description="Run a YAML config; key=value pairs override it: run-level keys (below) and section keys "
        "(scenario.*, backbone.*, strategy.*; a misspelt key lists the valid ones; `ctta list` names the "
        "components). Example: ctta run configs/smoke/vpt_digits.yaml strategy.lr=0.02 seed=2 log.out_dir=runs/lr02",
        epilog="run-level keys (example override, meaning, default):\n" + run_keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("config")
    r.add_argument("overrides", nargs="*", metavar="key=value")
    r.set_defaults(func=_cmd_run)
    d = sub.add_parser(
        "demo",
        help="the embedded defaults, offline: 'cl' (MVP on a Si-Blurry digits stream vs a linear probe and naive "
        "fine-tuning), 'tta' (zero-shot CLIP vs TPT on corrupted digits) or 'fewshot' (zero-shot CLIP vs CoOp, "
        "CoCoOp, MaPLe and PromptSRC on base-to-new digits)",
    )
    d.add_argument("overrides", nargs="*", metavar="[cl|tta|fewshot] key=value")
    d.set_defaults(func=_cmd_demo)
    g = sub.add_parser("generate", help="pre-generate cached views (DiffTPT diffusion views) for a config")
    g.add_argument("config")
    g.add_argument("overrides", nargs="*", metavar="key=value")
    g.set_defaults(func=_cmd_generate)
    e = sub.add_parser("explain", help="Prompt-CAM trait maps (PNGs + contact sheet) of a config's test images; "
                       "trains the config first unless --checkpoint is given")
    e.add_argument("config")
    e.add_argument("overrides", nargs="*", metavar="key=value")
    e.add_argument("--checkpoint", default=None, help="a ctta checkpoint (ckpt-*.pt) or state dict of the prompts")
    e.add_argument("--images", type=int, default=4, help="number of test images (default 4)")
    e.add_argument("--top-traits", type=int, default=4, help="ranked heads drawn per image (default 4)")
    e.add_argument("--out", default=None, help="output folder (default <log.out_dir>/explain)")
    e.set_defaults(func=_cmd_explain)
    ls = sub.add_parser("list", help="list strategies, scenarios, backbones, shipped backbones and datasets")
    ls.set_defaults(func=_cmd_list)
    from ctta.runner.compare import add_compare_parser

    add_compare_parser(sub)
    return p


_USER_ERRORS = (FileNotFoundError, ValueError, ImportError, RuntimeError)  # ConfigError, DivergenceError among them


def _loaded(module: str, name: str) -> tuple[type, ...]:
    """``(module.name,)`` if ``module`` is already imported, else ``()``: its errors cannot have been raised, and
    importing it only to test for them would load torch and Avalanche (``guards``, ``outdir``)."""
    cls = getattr(sys.modules.get(module), name, None)
    return (cls,) if isinstance(cls, type) else ()


def _close_progress_bars() -> None:
    """End the bars a failed run left open, so the error starts its own line (it was appended to the bar's)."""
    bar_class = getattr(sys.modules.get("tqdm.std"), "tqdm", None)
    for bar in list(getattr(bar_class, "_instances", ())):
        bar.close()


def _said_errors() -> tuple[type, ...]:
    """ctta's own user errors whose message says what to do: an output folder's, a replay log's missing answer."""
    return (*_loaded("ctta.runner.outdir", "RunError"), *_loaded("ctta.llm.replay", "LLMReplayMissing"))


def _user_message(e: BaseException, cmd: str) -> str:
    """The one-line message for a user error (missing data/weights, config, output folder, divergence, inputs)."""
    from ctta.runner.config import ConfigError

    if isinstance(e, ConfigError):
        return f"config error: {e}"
    if isinstance(e, _loaded("ctta.runner.guards", "DivergenceError")):
        return f"run diverged: {e} (recorded in results.json with status 'diverged')"
    if isinstance(e, (FileNotFoundError, *_said_errors())):  # the message says what to do
        return str(e)
    msg = " ".join(str(e).split())  # refused inputs, a missing extra, weights not available
    return f"{type(e).__name__}: {msg} (ctta --debug {cmd} ... shows the traceback)"


def _ctta_dirs() -> tuple[str, ...]:
    """The source folders of ``ctta``, ``ctta.strategies`` and ``ctta.scenarios`` (found without importing them)."""
    from ctta.registry_index import package_dir

    return tuple(str(package_dir(p)) for p in ("ctta", "ctta.strategies", "ctta.scenarios"))


def one_line_warnings(dirs: tuple[str, ...]):
    """A ``warnings.showwarning`` printing warnings raised from ctta's own code as ``ctta: warning: MESSAGE``
    (one line, no source line); any other warning keeps Python's format."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if not str(filename).startswith(dirs):
            return default(message, category, filename, lineno, file, line)
        print(f"ctta: warning: {message}", file=file or sys.stderr)

    return show


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    shown, warnings.showwarning = warnings.showwarning, one_line_warnings(_ctta_dirs())
    try:
        return args.func(args)
    except Exception as e:
        if args.debug or not isinstance(e, (*_USER_ERRORS, *_said_errors())):
            raise
        _close_progress_bars()
        print(f"ctta: {_user_message(e, args.cmd)}", file=sys.stderr)
        return 2  # every user error (ConfigError is a ValueError, DivergenceError a RuntimeError): exit code 2
    finally:
        warnings.showwarning = shown
        dist = sys.modules.get("torch.distributed")  # only a run that imported torch can have joined a group
        if dist is not None and dist.is_available() and dist.is_initialized():  # torchrun: leave the group cleanly
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
