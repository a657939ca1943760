"""Command line: ``ctta run CONFIG [key=value ...]``, ``ctta demo``, ``ctta generate CONFIG``, ``ctta list``."""

from __future__ import annotations

import argparse
import sys
import warnings

warnings.filterwarnings("ignore", message=".*QP solver.*")  # avalanche's optional qpsolvers notice


def _load(path, overrides):
    """The validated config (a ``ConfigError`` reaches ``main``, which prints it without a traceback)."""
    from ctta.runner.config import load_config

    return load_config(path, overrides)


def _cmd_run(args: argparse.Namespace) -> int:
    from ctta.runner.run import run

    cfg = _load(args.config, args.overrides)
    run(cfg)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """``ctta demo [cl|tta] [key=value ...]``: the embedded defaults on the shipped pretrained tiny backbones."""
    from ctta.runner.config import ConfigError
    from ctta.runner.demo import demo_main

    words = list(args.overrides)
    kind = words.pop(0) if words and "=" not in words[0] else "cl"
    if kind not in ("cl", "tta"):
        raise ConfigError(f"ctta demo takes 'cl' (default) or 'tta' and key=value overrides, got {kind!r}")
    return demo_main(kind, words)


def _cmd_generate(args: argparse.Namespace) -> int:
    """Pre-generate cached views (DiffTPT) for a config; shards by torchrun's RANK / WORLD_SIZE."""
    import os

    from ctta.runner.run import prepare

    cfg = _load(args.config, args.overrides)
    ctx = prepare(cfg, outputs=False)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    n = ctx.strategy.pregenerate(ctx.bench.test_stream, rank=rank, world_size=world)  # None: nothing to generate
    if n is None:
        print(f"ctta: strategy {cfg.strategy.name!r} has nothing to pre-generate", file=sys.stderr)
        return 2
    print(f"generated {n} images (rank {rank} of {world}); cached views are reused by `ctta run`")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from ctta.registry import BACKBONES, SCENARIOS, STRATEGIES

    for title, reg in (("strategies", STRATEGIES), ("scenarios", SCENARIOS), ("backbones", BACKBONES)):
        names = list(reg)
        print(f"{title}:")
        for n in names:
            entry = reg.get(n)
            doc = (entry.builder.__doc__ or "").strip().splitlines()
            print(f"  {n:<18} {doc[0] if doc else ''}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ctta", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show the full traceback of errors")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a YAML config; key=value pairs override it (e.g. strategy.lr=0.01)")
    r.add_argument("config")
    r.add_argument("overrides", nargs="*", metavar="key=value")
    r.set_defaults(func=_cmd_run)
    d = sub.add_parser(
        "demo",
        help="the embedded defaults, offline: 'cl' (MVP on a Si-Blurry digits stream vs a linear probe and naive "
        "fine-tuning) or 'tta' (zero-shot CLIP vs TPT on corrupted digits)",
    )
    d.add_argument("overrides", nargs="*", metavar="[cl|tta] key=value")
    d.set_defaults(func=_cmd_demo)
    g = sub.add_parser("generate", help="pre-generate cached views (DiffTPT diffusion views) for a config")
    g.add_argument("config")
    g.add_argument("overrides", nargs="*", metavar="key=value")
    g.set_defaults(func=_cmd_generate)
    ls = sub.add_parser("list", help="list registered strategies, scenarios and backbones")
    ls.set_defaults(func=_cmd_list)
    return p


def _user_message(e: BaseException, cmd: str) -> str:
    """The one-line message for a user error (missing data/weights, config, output folder, divergence, inputs)."""
    from ctta.runner.config import ConfigError
    from ctta.runner.guards import DivergenceError
    from ctta.runner.outdir import RunError

    if isinstance(e, ConfigError):
        return f"config error: {e}"
    if isinstance(e, DivergenceError):
        return f"run diverged: {e} (recorded in results.json with status 'diverged')"
    if isinstance(e, (FileNotFoundError, RunError)):  # the message says what to do
        return str(e)
    msg = " ".join(str(e).split())  # refused inputs, a missing extra, weights not available
    return f"{type(e).__name__}: {msg} (ctta --debug {cmd} ... shows the traceback)"


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from ctta.runner.config import ConfigError
    from ctta.runner.guards import DivergenceError
    from ctta.runner.outdir import RunError

    try:
        return args.func(args)
    except (FileNotFoundError, ConfigError, RunError, DivergenceError, ValueError, ImportError, RuntimeError) as e:
        if args.debug:
            raise
        print(f"ctta: {_user_message(e, args.cmd)}", file=sys.stderr)
        return 2  # every user error: one message, exit code 2
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():  # torchrun: leave the process group cleanly
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
