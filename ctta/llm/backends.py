"""Live language-model backends without heavy dependencies: canned responses and OpenAI-compatible HTTP servers.

* ``ScriptedLM`` (``scripted:<file.json>``): answers from a JSON list, in order, whatever is asked. It writes real
  recorded logs of the exact requests a method makes (tests, smoke configs) without a model.
* ``OpenAICompatibleLM`` (``openai:<model>``): POST ``<base_url>/chat/completions`` (OpenAI's API, vLLM, llama.cpp,
  Ollama, ...) over the standard library's urllib. The API key is read from the environment variable named by
  ``api_key_env`` at the moment of each call and only ever sent in the ``Authorization`` header: it is not stored on
  the object, logged, or put in an error message.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ctta.llm.replay import check_messages, fill_sampling

DEFAULT_BASE_URL = "https://api.openai.com/v1"


def cut_at_stop(text: str, stop: list[str]) -> str:
    """``text`` up to (not including) the first occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]


class ScriptedLM:
    """Canned responses in order: each call takes one list entry (its n completions) or n string entries.

    Args:
        path: JSON file holding a list; an entry is a string (one completion) or a list of strings (a whole answer).
        name: the model name in the keys (default ``scripted:<file name>``, independent of the folder).
    """

    def __init__(self, path: str | Path, name: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"scripted language model: no file {self.path} (a JSON list of responses)")
        entries = json.loads(self.path.read_text(encoding="utf-8"))
        if not isinstance(entries, list):
            raise ValueError(f"{self.path}: expected a JSON list of responses, got {type(entries).__name__}")
        self.entries = entries
        self.used = 0
        self.name = name or f"scripted:{self.path.name}"

    def generate(self, messages: list[dict[str, str]], **sampling: Any) -> list[str]:
        """The next canned answer (``n`` completions), cut at the stop strings."""
        messages, sampling = check_messages(messages), fill_sampling(sampling)
        n = sampling["n"]
        if self.used < len(self.entries) and isinstance(self.entries[self.used], list):
            answer = [str(s) for s in self.entries[self.used]]
            self.used += 1
            if len(answer) != n:
                raise ValueError(f"{self.path}: entry {self.used - 1} holds {len(answer)} completions, asked n={n}")
        elif self.used + n <= len(self.entries):
            answer = [str(s) for s in self.entries[self.used:self.used + n]]
            self.used += n
        else:
            start = " ".join(messages[-1]["content"].split())[:80]
            raise LookupError(f"{self.path}: ran out of canned responses after {self.used} of {len(self.entries)} "
                              f"at the request whose last message starts {start!r}")
        return [cut_at_stop(a, sampling["stop"]) for a in answer]


class OpenAICompatibleLM:
    """An OpenAI-compatible ``/chat/completions`` endpoint.

    Args:
        model: the server's model name (``gpt-3.5-turbo``, a vLLM model id, ...).
        base_url: the API root, ``.../v1``.
        api_key_env: NAME of the environment variable holding the key (unset: no Authorization header, for local
            servers that need none).
        timeout: seconds per HTTP request.
    """

    def __init__(self, model: str, base_url: str = DEFAULT_BASE_URL, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 120.0):
        self.model = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.name = f"openai:{model}"

    def generate(self, messages: list[dict[str, str]], **sampling: Any) -> list[str]:
        """n completions; servers that return fewer choices than asked are asked again for the rest."""
        messages, sampling = check_messages(messages), fill_sampling(sampling)
        out: list[str] = []
        while len(out) < sampling["n"]:
            body = self._body(messages, {**sampling, "n": sampling["n"] - len(out)})
            choices = self._post(body).get("choices") or []
            if not choices:
                raise RuntimeError(f"{self.name}: {self.url} answered without choices")
            out += [cut_at_stop(c["message"]["content"] or "", sampling["stop"]) for c in choices]
        return out[:sampling["n"]]

    def _body(self, messages: list[dict[str, str]], sampling: dict[str, Any]) -> dict[str, Any]:
        body = {"model": self.model, "messages": messages, "n": sampling["n"], "temperature": sampling["temperature"],
                "top_p": sampling["top_p"], "max_tokens": sampling["max_tokens"], "seed": sampling["seed"]}
        if sampling["stop"]:
            body["stop"] = sampling["stop"]
        if sampling["top_k"]:
            body["top_k"] = sampling["top_k"]  # not OpenAI's API; vLLM and llama.cpp servers accept it
        return body

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode("utf-8"), headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as err:
            hint = f" (is ${self.api_key_env} set to a valid key?)" if err.code in (401, 403) else ""
            raise RuntimeError(f"{self.name}: {self.url} answered HTTP {err.code} {err.reason}{hint}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise RuntimeError(f"{self.name}: cannot reach {self.url} ({reason}); check base_url and the "
                               f"network, or replay a recorded log (llm=replay)") from None
