"""Output folders that never mix runs.

A run's folder holds one run: before anything is built the folder is checked (a folder, writable; a finished or
unfinished earlier run is kept unless ``overwrite=true`` or, for an unfinished one, ``resume=true``); then the
resolved ``config.yaml`` and a ``running.json`` marker are written; results are written when the run ends, and
the marker is removed. Temporary files left by interrupted writes are removed at the start.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ctta.runner.checkpoint import CKPT_GLOB, clean_stale_temporaries, umask_mode

MARKER = "running.json"
RESULT_FILES = ("results.json", "metrics.csv", "accuracy.png")


class RunError(Exception):
    """A user error found by the runner (output folder, resume): the CLI prints it as one line, exit code 2."""


def _writable_ancestor(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_out_dir(out: str | Path, *, resume: bool = False, overwrite: bool = False,
                  resumable: Callable[[], str | None] | None = None) -> None:
    """Raise ``RunError`` if ``out`` cannot hold this run; writes nothing.

    Args:
        out: the run's output folder (``log.out_dir``).
        resume: ``resume=true``: an unfinished run there may be resumed (the checkpoint check follows).
        overwrite: ``overwrite=true``: an earlier run's results may be replaced (its checkpoints are kept).
        resumable: asked only when an unfinished run is found: ``None`` if this run's strategy can resume, else
            the reason it cannot (the message then offers ``overwrite=true`` alone, not ``resume=true``).
    """
    out = Path(out)
    ancestor = _writable_ancestor(out)
    if ancestor.exists() and not ancestor.is_dir():
        what = "is a file" if ancestor == out else f"lies under {ancestor}, which is a file"
        raise RunError(f"log.out_dir {out} {what}, not a folder; choose another log.out_dir")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise RunError(f"log.out_dir {out} is not writable ({ancestor} is read-only); choose another log.out_dir")
    if not out.is_dir() or overwrite:
        return
    results, marker = out / "results.json", out / MARKER
    ckpts = sorted((out / "checkpoints").glob(CKPT_GLOB)) if (out / "checkpoints").is_dir() else []
    if results.is_file() and not (resume and ckpts):
        status = _status(results)
        hint = "set overwrite=true to replace it (its checkpoints are kept)"
        if resume:
            hint = "it has no checkpoint to resume; " + hint
        raise RunError(f"log.out_dir {out} already holds a finished run (results.json, {status}); {hint}, "
                       f"or choose another log.out_dir")  # fmt: skip
    if (marker.is_file() or ckpts) and not results.is_file() and not resume:
        started = _started(marker)
        why_not = resumable() if resumable is not None else None
        if why_not:
            raise RunError(f"log.out_dir {out} holds an unfinished run{started}; it cannot be resumed ({why_not}): "
                           f"overwrite=true starts over (its checkpoints are kept), or choose another log.out_dir")
        raise RunError(f"log.out_dir {out} holds an unfinished run{started}; resume=true resumes it (if its config "
                       f"matches), overwrite=true starts over (its checkpoints are kept), or choose another "
                       f"log.out_dir")  # fmt: skip


def _status(results: Path) -> str:
    try:
        return f"status {json.loads(results.read_text()).get('status', 'finished')}"
    except (ValueError, OSError):
        return "unreadable"


def _started(marker: Path) -> str:
    try:
        m = json.loads(marker.read_text())
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m["started"]))
        return f" (started {when} by process {m['pid']} on {m['host']})"
    except (ValueError, OSError, KeyError, TypeError):
        return ""


@dataclass
class Started:
    """What ``begin`` found, so that ``abandon`` can put the folder back when the run fails before it starts."""

    out: Path
    created: bool  # the folder did not exist
    config: bytes | None  # the previous config.yaml (None: there was none)
    had_marker: bool
    had_log: bool


def begin(out: str | Path, cfg, run_id: str, *, overwrite: bool = False) -> Started:
    """Create ``out``, remove stray temporaries (and, with ``overwrite``, earlier results), write the resolved
    ``config.yaml`` and the ``running.json`` marker."""
    from ctta.runner.config import dump_config

    out = Path(out)
    conf, marker_path = out / "config.yaml", out / MARKER
    started = Started(out, not out.exists(), conf.read_bytes() if conf.is_file() else None, marker_path.is_file(),
                      (out / "log.txt").is_file())  # fmt: skip
    try:
        out.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, out / "config.yaml")
    except OSError as e:
        raise RunError(f"log.out_dir {out} cannot be written: {e.strerror or e}; choose another log.out_dir") from None
    clean_stale_temporaries(out / "checkpoints")
    for p in out.glob(".*.tmp"):  # atomic writes interrupted before os.replace
        p.unlink(missing_ok=True)
    if overwrite:
        for name in RESULT_FILES:
            (out / name).unlink(missing_ok=True)
    marker = {"run_id": run_id, "pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    path = out / MARKER
    path.write_text(json.dumps(marker) + "\n")
    os.chmod(path, umask_mode())
    return started


def abandon(started: Started) -> None:
    """The run failed before training started: restore the folder as ``begin`` found it (nothing else touched)."""
    out = started.out
    if not started.had_marker:
        (out / MARKER).unlink(missing_ok=True)
    conf = out / "config.yaml"
    if started.config is None:
        conf.unlink(missing_ok=True)
    else:
        conf.write_bytes(started.config)
    log = out / "log.txt"
    if not started.had_log and log.is_file() and log.stat().st_size == 0:
        log.unlink()
    if started.created:
        try:
            out.rmdir()  # only if empty
        except OSError:
            pass


def finish(out: str | Path) -> None:
    """The run ended (results written): remove the marker."""
    (Path(out) / MARKER).unlink(missing_ok=True)
