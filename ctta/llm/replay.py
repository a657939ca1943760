"""Record and replay of language-model calls: request keys, the JSONL log and the replaying wrapper.

A request is ``(model name, messages, sampling)``; its key is the SHA-256 of the canonical JSON of those three (keys
sorted, no whitespace, sampling with every default filled in and numbers normalised), plus ``extra`` when the caller
gives key material that changes the answer without being part of the request (e.g. a steering hook's settings).
Identical requests repeated in one run are told apart by their occurrence index (0, 1, ...), so a run that asks the
same question twice with sampling on replays both answers in order.

The log is JSON Lines, one record per live call::

    {"key": ..., "occurrence": 0, "model": ..., "messages": [...], "sampling": {...}, "responses": [...],
     "timestamp": "2026-...Z"}            # + "extra": {...} when the caller gave key material

Each record is written and flushed (and fsync'ed) on its own, so a killed run loses at most the call in flight; a
truncated last line is ignored with a warning when the log is read, and cut off before the next append.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

ROLES = ("system", "user", "assistant")

# Every sampling setting a request may carry, with the value a request that does not set it gets. The filled-in
# dict is part of the key, so changing a default here changes every key (and makes recorded logs miss): don't.
SAMPLING_DEFAULTS: dict[str, Any] = {
    "n": 1,  # completions per request
    "temperature": 1.0,  # 0 = greedy decoding
    "top_p": 1.0,  # nucleus sampling mass (1.0 = off)
    "top_k": 0,  # top-k filtering (0 = off)
    "max_tokens": 256,  # new tokens per completion
    "stop": [],  # completions are cut before the first of these strings
    "seed": 0,  # the local backend's generator seed; sent to HTTP servers (most honour it)
}
_INTS = ("n", "top_k", "max_tokens", "seed")
_FLOATS = ("temperature", "top_p")


class LLMReplayMissing(LookupError):
    """A request is not in the replay log (pure replay: no backend to ask)."""


@runtime_checkable
class LanguageModel(Protocol):
    """Anything that answers chat requests: ``generate(messages, **sampling) -> list of n completions``."""

    name: str

    def generate(self, messages: list[dict[str, str]], **sampling: Any) -> list[str]:
        """Return ``sampling["n"]`` completions (default 1) of the chat ``messages`` (OpenAI format)."""
        ...


def fill_sampling(sampling: dict[str, Any]) -> dict[str, Any]:
    """Sampling settings with defaults filled in and types normalised (``1`` and ``1.0`` give the same key).

    Raises:
        ValueError: an unknown setting (a typo would otherwise silently change nothing but the key).
    """
    unknown = sorted(set(sampling) - set(SAMPLING_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown sampling settings {unknown}; known: {sorted(SAMPLING_DEFAULTS)}")
    out = {**SAMPLING_DEFAULTS, **sampling}
    for name in _INTS:
        out[name] = int(out[name])
    for name in _FLOATS:
        out[name] = float(out[name])
    stop = out["stop"] or []
    out["stop"] = [stop] if isinstance(stop, str) else [str(s) for s in stop]
    if out["n"] < 1 or out["max_tokens"] < 1:
        raise ValueError(f"sampling needs n >= 1 and max_tokens >= 1, got n={out['n']}, max_tokens={out['max_tokens']}")
    return out


def check_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The messages as plain ``{"role", "content"}`` dicts, after checking the OpenAI chat format."""
    if not messages:
        raise ValueError("a request needs at least one message")
    out = []
    for i, msg in enumerate(messages):
        if msg.get("role") not in ROLES or not isinstance(msg.get("content"), str):
            raise ValueError(f"message {i} must be {{'role': one of {ROLES}, 'content': str}}, got {msg!r}")
        out.append({"role": msg["role"], "content": msg["content"]})
    return out


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the same object always gives the same string."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_key(model: str, messages: list[dict[str, str]], sampling: dict[str, Any], extra: dict | None = None) -> str:
    """SHA-256 (hex) of the canonical request; ``sampling`` is filled with the defaults first."""
    request = {"model": model, "messages": check_messages(messages), "sampling": fill_sampling(sampling)}
    if extra:
        request["extra"] = extra
    return hashlib.sha256(canonical_json(request).encode("utf-8")).hexdigest()


class ReplayLog:
    """The JSONL log of one or more runs: ``(key, occurrence) -> responses``; appends are crash-safe.

    Args:
        path: the log file (created on the first append); ``None`` keeps records in memory only.

    Raises:
        ValueError: ``path`` is a folder.
    """

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        self.records: dict[tuple[str, int], dict] = {}
        self._cut_to: int | None = None  # byte offset of a partial last line (cut off before appending)
        self._needs_newline = False  # the last record's newline was never written
        if self.path is not None and self.path.is_dir():
            raise ValueError(f"replay log {self.path} is a folder: pass a JSONL log file (e.g. {self.path}/run.jsonl)")
        if self.path is not None and self.path.exists():
            self._read()

    def _read(self) -> None:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        offset = 0
        for i, line in enumerate(lines):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    if i < len(lines) - 1:  # a complete line that is not JSON: not a crash, a damaged file
                        raise ValueError(f"{self.path}: line {i + 1} is not a JSON record ({err})") from err
                    warnings.warn(f"{self.path}: ignoring a truncated last line (a run killed mid-write?)",
                                  stacklevel=3)
                    self._cut_to = offset
                    break
                self.records.setdefault((record["key"], int(record["occurrence"])), record)
            offset += len(line) + 1
        else:
            self._needs_newline = bool(data) and not data.endswith(b"\n")

    def get(self, key: str, occurrence: int) -> dict | None:
        """The record of the ``occurrence``-th request with this key, or ``None``."""
        return self.records.get((key, occurrence))

    def models(self) -> list[str]:
        """The model names the log holds records of (sorted)."""
        return sorted({r["model"] for r in self.records.values()})

    def append(self, record: dict) -> None:
        """Add one record (and write it as one flushed line when the log has a file)."""
        self.records.setdefault((record["key"], int(record["occurrence"])), record)
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._cut_to is not None:
            os.truncate(self.path, self._cut_to)
        prefix = b"\n" if self._needs_newline else b""
        self._cut_to, self._needs_newline = None, False
        with open(self.path, "ab") as f:
            f.write(prefix + canonical_json(record).encode("utf-8") + b"\n")
            f.flush()
            os.fsync(f.fileno())


class ReplayingLM:
    """Answers from the log when it can, else from ``backend`` (appending the answer), else raises.

    Args:
        backend: the live model, or ``None`` for pure replay.
        log: the replay log.
        name: the model name that goes into the keys (default: the backend's name).
    """

    def __init__(self, backend: LanguageModel | None, log: ReplayLog, name: str | None = None):
        if backend is None and name is None:
            raise ValueError("pure replay needs the recorded model name")
        self.backend = backend
        self.log = log
        self.name = name or backend.name
        self.calls = 0  # live calls made by this object
        self._seen: Counter[str] = Counter()

    def generate(self, messages: list[dict[str, str]], key_extra: dict | None = None, **sampling: Any) -> list[str]:
        """Return n completions; ``key_extra``: JSON-able settings that change the answer outside the request
        (e.g. a hidden-state steering hook the caller installed on the local model) and so belong in the key."""
        messages = check_messages(messages)
        sampling = fill_sampling(sampling)
        key = request_key(self.name, messages, sampling, key_extra)
        occurrence = self._seen[key]
        self._seen[key] += 1
        found = self.log.get(key, occurrence)
        if found is not None:
            return list(found["responses"])
        if self.backend is None:
            raise LLMReplayMissing(_missing_message(self.log, key, occurrence, messages))
        responses = [str(r) for r in self.backend.generate(messages, **sampling)]
        self.calls += 1
        record = {"key": key, "occurrence": occurrence, "model": self.name, "messages": messages,
                  "sampling": sampling, "responses": responses, "timestamp": _now()}
        if key_extra:
            record["extra"] = key_extra
        self.log.append(record)
        return responses


def _missing_message(log: ReplayLog, key: str, occurrence: int, messages: list[dict[str, str]]) -> str:
    start = " ".join(messages[-1]["content"].split())[:80]
    where = log.path if log.path is not None else "<memory>"
    return (f"replay log {where} has no answer for request {key} (occurrence {occurrence}) whose last message "
            f"starts {start!r}: record it with a live backend (llm=hf:... / openai:...) and the same log")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
