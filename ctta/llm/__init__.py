"""Language models behind one call, ``generate(messages, **sampling) -> list[str]``, recorded and replayable.

Used by the methods that put a language model in the loop (IPO, the LLM black-box optimizer, GLOV) and by the
PAC-Bayes prompt prior. ``make_llm(spec, log)`` returns a ``ReplayingLM``: a request already in the log is answered
from it (no call), a new one goes to the live backend and is appended to the log, so any run can be replayed byte for
byte offline; ``spec="replay"`` has no backend and raises ``LLMReplayMissing`` for a request the log lacks.

Specs: ``replay`` | ``hf:<hub id or local folder>`` (transformers, extra ``ctta[diffusion]``) |
``openai:<model>`` (OpenAI-compatible HTTP; options ``base_url``, ``api_key_env``, ``timeout``) |
``scripted:<file.json>`` (canned responses in order). Option ``name``: the model name in the keys.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ctta.llm.backends import DEFAULT_BASE_URL, OpenAICompatibleLM, ScriptedLM
from ctta.llm.replay import (
    SAMPLING_DEFAULTS,
    LanguageModel,
    LLMReplayMissing,
    ReplayingLM,
    ReplayLog,
    fill_sampling,
    request_key,
)

__all__ = ["LanguageModel", "LLMReplayMissing", "ReplayLog", "ReplayingLM", "SAMPLING_DEFAULTS", "check_llm",
           "fill_sampling", "make_backend", "make_llm", "request_key"]

SPECS = ("replay", "hf:<model id or folder>", "openai:<model>", "scripted:<file.json>")


def make_backend(spec: str, **options: Any) -> LanguageModel:
    """The live backend a spec names (no log): ``hf:...``, ``openai:...`` or ``scripted:...``."""
    kind, _, arg = spec.partition(":")
    if not arg or kind not in ("hf", "openai", "scripted"):
        raise ValueError(f"unknown language model {spec!r}; expected one of {SPECS}")
    if kind == "scripted":
        return ScriptedLM(arg, **options)
    if kind == "openai":
        name = options.pop("name", None)
        backend = OpenAICompatibleLM(arg, **options)
        backend.name = name or backend.name
        return backend
    from ctta.llm.hf import HFCausalLM  # torch-heavy; transformers itself is imported only when loading

    return HFCausalLM(arg, **options)


def make_llm(spec: str | None, log: str | Path | None, **options: Any) -> ReplayingLM:
    """A recorded/replayed language model.

    Args:
        spec: ``"replay"`` (or ``None``) for the log alone, else a live backend spec (see the module docstring).
        log: the JSONL replay log (``None``: nothing is recorded; pure replay then has nothing to answer from).
        **options: backend options (``name``, ``base_url``, ``api_key_env``, ``device``, ``model``, ...). For pure
            replay only ``name``: the recorded model name, needed when the log holds several models.

    Raises:
        ValueError: an unknown spec, or pure replay whose model name cannot be told from the log.
    """
    replay_log = ReplayLog(log)
    if spec in (None, "replay"):
        unknown = sorted(set(options) - {"name"})
        if unknown:
            raise ValueError(f"pure replay takes only the option 'name', got {unknown}")
        return ReplayingLM(None, replay_log, name=options.get("name") or _recorded_name(replay_log, log))
    backend = make_backend(spec, **options)
    return ReplayingLM(backend, replay_log)


def check_llm(spec: str | None, log: str | Path | None, api_key_env: str = "OPENAI_API_KEY", base_url: str = "",
              ) -> None:
    """Check, without loading anything, what ``make_llm(spec, log)`` will need from the user (a run's early check).

    Pure replay: the log exists; ``hf:`` naming a local folder: it exists; ``openai:`` at the default server: the
    key's environment variable ``api_key_env`` is set (a ``base_url`` server may need none); ``scripted:``: the file.

    Raises:
        FileNotFoundError: a missing file or folder. ValueError: an unknown spec, replay without log, an unset key.
    """
    if spec in (None, "replay"):
        _check_replay_log(log)
        return
    kind, _, arg = spec.partition(":")
    if not arg or kind not in ("hf", "openai", "scripted"):
        raise ValueError(f"unknown language model {spec!r}; expected one of {SPECS}")
    if kind == "scripted" and not Path(arg).is_file():
        raise FileNotFoundError(f"scripted language model: no file {arg} (a JSON list of responses)")
    if kind == "hf" and _looks_local(arg) and not Path(arg).expanduser().is_dir():
        raise FileNotFoundError(f"hf:{arg}: cannot load this causal language model (no such folder); pass a local "
                                "folder holding it: hf:/path/to/model")
    if kind == "openai" and base_url in ("", DEFAULT_BASE_URL) and not os.environ.get(api_key_env):
        raise ValueError(f"llm={spec} needs an API key in the environment variable {api_key_env}, which is not set "
                         f"(export it, or point llm_base_url at a server that needs none)")


def _looks_local(model_id: str) -> bool:
    """A ``hf:`` argument that is a path, not a hub id (``owner/name`` or ``name``)."""
    return model_id.startswith(("/", ".", "~")) or "\\" in model_id or model_id.count("/") > 1


def _check_replay_log(log: str | Path | None) -> None:
    if log is None or str(log) == "":
        raise ValueError("llm=replay needs a log file (llm_log=...)")
    if not Path(log).is_file():
        raise FileNotFoundError(f"replay log {log} does not exist: record one with a live backend and this log")


def _recorded_name(replay_log: ReplayLog, log: str | Path | None) -> str:
    _check_replay_log(log)
    models = replay_log.models()
    if len(models) != 1:
        found = f"holds records of {models}" if models else "is empty"
        raise ValueError(f"replay log {log} {found}: pass the recorded model's name (name=...)")
    return models[0]
