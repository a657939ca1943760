"""Plain state-dict checkpoints for online continual learning (never Avalanche's dill checkpointing).

Avalanche 0.6's ``save_checkpoint`` pickles the whole strategy with dill and fails as soon as it holds a torch
optimiser (torch >= 2.x optimisers hold unpicklable hooks). A ctta checkpoint holds only tensors and plain data:
trainable parameters and module buffers (prompt-selection counts, ...), the optimiser state, label bookkeeping,
the metric history, the anytime-evaluation schedule, the stream position and the RNG states.

Files are ``ckpt-<samples>-<run>.pt``, written atomically (temporary file + ``os.replace``), each with a JSON
sidecar ``ckpt-<samples>-<run>.json`` recording its SHA-256, the progress (stream samples), the id of the run that
wrote it and the run's *fingerprint*: everything that changes results (the resolved config minus output-only keys,
package versions, dataset identity). A run prunes only its own checkpoints (the newest ``keep``); resuming picks,
among the checkpoints whose fingerprint matches, the one with the most recorded progress that verifies and loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from avalanche.training.plugins import SupervisedPlugin

from ctta.utils import rng_state, set_rng_state  # noqa: F401  (re-exported for checkpoint users)

CKPT_GLOB = "ckpt-*.pt"
TMP_GLOB = ".ckpt-*.tmp"
FORMAT = 2
_PROCESS_RUN = uuid.uuid4().hex  # run id of checkpoints saved without one (one per process)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` filtered by the process umask: the permissions ``open()`` would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def meta_path(ckpt: Path) -> Path:
    return ckpt.with_suffix(".json")


def save_checkpoint(
    directory: str | Path,
    state: dict[str, Any],
    step: int,
    keep: int = 2,
    run_id: str | None = None,
    fingerprint: Mapping[str, Any] | None = None,
) -> Path:
    """Atomically write ``state`` as ``ckpt-<step>-<run>.pt`` with its JSON sidecar; keep this run's newest ``keep``.

    Args:
        directory: the checkpoint folder (created if missing).
        state: tensors and plain data (``strategy.checkpoint_state()``).
        step: the progress the checkpoint records (stream samples done); orders checkpoints on resume.
        keep: how many of this run's checkpoints to keep (older ones of *this run* are deleted; never others').
        run_id: the writing run's id (default: one id per process).
        fingerprint: flat ``{key: value}`` of what changes results (see ``run_fingerprint``).
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    run_id = run_id or _PROCESS_RUN
    path = d / f"ckpt-{step:012d}-{run_id[:12]}.pt"
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".ckpt-", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.chmod(tmp, umask_mode())
        digest = _sha256(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    meta = {"format": FORMAT, "sha256": digest, "progress": int(step), "run_id": run_id, "written": time.time(),
            "fingerprint": dict(fingerprint or {})}  # fmt: skip
    side = meta_path(path)
    tmp_side = d / f".ckpt-{path.stem}.json.tmp"
    tmp_side.write_text(json.dumps(meta, indent=1, default=str) + "\n")
    os.replace(tmp_side, side)
    own = [(m["progress"], m["written"], p) for p, m in _metas(d) if m.get("run_id") == run_id]
    for _, _, old in sorted(own)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
        meta_path(old).unlink(missing_ok=True)
    return path


def _read_meta(path: Path) -> dict[str, Any]:
    side = meta_path(path)
    if not side.is_file():
        legacy = path.with_suffix(".sha256")
        if legacy.is_file():
            raise ValueError("written by an older ctta (no fingerprint recorded)")
        raise ValueError(f"no {side.name} (interrupted while saving)")
    meta = json.loads(side.read_text())
    if not isinstance(meta, dict) or not {"sha256", "progress"} <= set(meta):
        raise ValueError(f"{side.name} is not a checkpoint record")
    return meta


def _metas(directory: Path) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for p in directory.glob(CKPT_GLOB):
        try:
            out.append((p, _read_meta(p)))
        except (ValueError, OSError):
            continue
    return out


def _load(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    if _sha256(path) != meta["sha256"]:
        raise ValueError("checksum mismatch (truncated or partially written)")
    return torch.load(path, map_location="cpu", weights_only=False)


def diff_fingerprints(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (recorded, current)}`` for every key whose value differs (a missing key counts as ``None``)."""
    keys = sorted(set(recorded) | set(current))
    return {k: (recorded.get(k), current.get(k)) for k in keys if _norm(recorded.get(k)) != _norm(current.get(k))}


def _norm(v: Any) -> Any:
    return json.loads(json.dumps(v, default=str))  # tuples vs lists, as stored in the JSON sidecar


@dataclass
class Scan:
    """What a checkpoint folder holds for one run: the newest usable checkpoint and why the others were skipped."""

    state: dict[str, Any] | None = None
    path: Path | None = None
    run_id: str | None = None  # the run that wrote ``path``
    matching: list[Path] = field(default_factory=list)  # checkpoints whose fingerprint matches, most progress first
    mismatched: list[tuple[Path, dict[str, tuple[Any, Any]]]] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return self.state is not None


def scan_checkpoints(
    directory: str | Path, fingerprint: Mapping[str, Any] | None = None, partial: bool = False
) -> Scan:
    """The checkpoint with the most recorded progress whose fingerprint matches ``fingerprint`` and that loads.

    ``fingerprint=None`` accepts any fingerprint; ``partial=True`` compares only the keys ``fingerprint`` has and
    reads only the JSON records (``Scan.matching``; nothing loaded). Nothing is deleted: unreadable and mismatching
    checkpoints are listed in the returned ``Scan``.
    """
    scan = Scan()
    d = Path(directory)
    candidates = []
    for p in sorted(d.glob(CKPT_GLOB)) if d.is_dir() else []:
        try:
            meta = _read_meta(p)
        except (ValueError, OSError) as e:
            scan.unreadable.append((p, str(e)))
            continue
        recorded = meta.get("fingerprint", {})
        if partial and fingerprint is not None:
            recorded = {k: v for k, v in recorded.items() if k in fingerprint}
        diff = {} if fingerprint is None else diff_fingerprints(recorded, fingerprint)
        if diff:
            scan.mismatched.append((p, diff))
        else:
            candidates.append((int(meta["progress"]), float(meta.get("written", 0)), p, meta))
    candidates.sort(key=lambda c: c[:2], reverse=True)
    scan.matching = [c[2] for c in candidates]
    for _, _, p, meta in [] if partial else candidates:
        try:
            scan.state, scan.path, scan.run_id = _load(p, meta), p, meta.get("run_id")
            return scan
        except Exception as e:  # noqa: BLE001 - any unreadable file falls back to the previous one
            scan.unreadable.append((p, str(e)))
            scan.matching.remove(p)
            warnings.warn(f"skipping unreadable checkpoint {p.name}: {e}", stacklevel=2)
    return scan


def load_latest(directory: str | Path) -> tuple[dict[str, Any], Path] | None:
    """The checkpoint with the most recorded progress that verifies and loads (any fingerprint), or None."""
    scan = scan_checkpoints(directory)
    return (scan.state, scan.path) if scan.found else None


def clean_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete ``.ckpt-*.tmp`` files left by interrupted saves; returns what was removed."""
    d = Path(directory)
    stale = sorted(d.glob(TMP_GLOB)) if d.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


class CheckpointPlugin(SupervisedPlugin, supports_distributed=True):
    """Save ``strategy.checkpoint_state()`` every ``every`` stream samples and at the end of each experience."""

    def __init__(
        self,
        directory: str | Path,
        every: int,
        keep: int = 2,
        run_id: str | None = None,
        fingerprint: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if every <= 0:
            raise ValueError(f"checkpoint every must be positive, got {every}")
        self.directory, self.every, self.keep = Path(directory), int(every), int(keep)
        self.run_id = run_id or uuid.uuid4().hex
        self.fingerprint = dict(fingerprint or {})
        self.next_at = self.every

    def _save(self, strategy) -> None:
        save_checkpoint(self.directory, strategy.checkpoint_state(), strategy.seen_samples, self.keep, self.run_id,
                        self.fingerprint)  # fmt: skip

    def after_training_iteration(self, strategy, **kwargs) -> None:
        if strategy.seen_samples >= self.next_at:
            self.next_at = (strategy.seen_samples // self.every + 1) * self.every
            self._save(strategy)

    def after_training_exp(self, strategy, **kwargs) -> None:
        self._save(strategy)


OUTPUT_ONLY_KEYS = ("log", "resume", "overwrite", "device")  # where and how outputs go, not what is computed


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def dataset_identity(stream) -> dict[str, Any]:
    """Cheap identity of a stream's data: experience sizes and a SHA-256 of the targets in stream order."""
    sizes, h = [], hashlib.sha256()
    for exp in stream:
        sizes.append(len(exp.dataset))
        try:
            targets = exp.dataset.targets
            t = torch.as_tensor(targets.data if hasattr(targets, "data") else list(targets))
            h.update(t.cpu().numpy().tobytes())
        except Exception:  # noqa: BLE001 - targets not exposed: sizes only
            return {"sizes": sizes}
    return {"sizes": sizes, "targets_sha256": h.hexdigest()}


def run_fingerprint(cfg, stream=None) -> dict[str, Any]:
    """Flat ``{key: value}`` of everything that changes a run's results.

    The resolved config minus output-only keys (``log.*``, ``resume``, ``overwrite``; ``device`` is replaced by
    the device type, which decides ``precision: auto``), the package versions and, given ``stream``, the identity
    of its data (experience sizes, targets).
    """
    from ctta.runner.config import to_dict
    from ctta.runner.results import package_versions
    from ctta.utils import resolve_device

    conf = {k: v for k, v in to_dict(cfg).items() if k not in OUTPUT_ONLY_KEYS}
    fp = _flatten(conf) | {"device_type": resolve_device(cfg.device).type}
    fp |= _flatten(package_versions(), "versions.")
    if stream is not None:
        fp |= _flatten(dataset_identity(stream), "data.")
    return fp
