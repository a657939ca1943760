"""A local causal language model through transformers (optional extra ``ctta[diffusion]``), imported lazily.

``hf:<model id or local folder>``: the chat template is applied when the tokenizer has one (with the generation
prompt), otherwise the messages' contents are joined by blank lines. Sampling maps onto ``generate()``:
temperature 0 = greedy, else ``do_sample`` with ``temperature``, ``top_p``, ``top_k`` (0 = off); ``max_tokens`` =
``max_new_tokens``; ``n`` = ``num_return_sequences``; stop strings cut the decoded text. The global torch RNG is
forked and seeded with ``sampling["seed"]`` per call, so a call's answer depends on its request alone.

The loaded ``model`` and ``tokenizer`` are public: a caller may register a forward hook (e.g. hidden-state steering
on ``decoder_layers()[i]``) and must then pass the hook's settings as ``key_extra`` to the replaying wrapper's
``generate`` so recorded answers are keyed by them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ctta.extras import require
from ctta.llm.backends import cut_at_stop
from ctta.llm.replay import check_messages, fill_sampling

FEATURE = "the local language-model backend (hf:...)"


def load_causal_lm(model_id: str, device: str | torch.device | None = None, dtype: str | None = None):
    """``(model, tokenizer)`` from a hub id (the local hub cache when offline) or a local folder, in eval mode.

    Raises:
        MissingExtraError: transformers is not installed (names ``pip install 'ctta[diffusion]'``).
        FileNotFoundError: the model cannot be found (one message: pass a local folder, hf:/path/to/model).
    """
    transformers = require("transformers", "diffusion", FEATURE)
    kwargs = {"dtype": getattr(torch, dtype)} if dtype else {}
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_id)
        model = transformers.AutoModelForCausalLM.from_pretrained(model_id, **kwargs)
    except OSError as err:
        raise FileNotFoundError(f"hf:{model_id}: cannot load this causal language model ({str(err).splitlines()[0]}); "
                                f"offline, pass a local folder holding it: hf:/path/to/model") from None
    return model.to(device or "cpu").eval(), tokenizer


def _key_name(model_id: str) -> str:
    """A local folder is named by its last component (keys must not depend on where the copy lies)."""
    path = Path(model_id)
    return f"hf:{path.name}" if path.is_dir() else f"hf:{model_id}"


class HFCausalLM:
    """A transformers causal LM answering chat requests.

    Args:
        model_id: hub id or local folder (ignored for loading when ``model`` and ``tokenizer`` are given).
        model, tokenizer: an already loaded model and tokenizer (tests, or a caller sharing one model).
        device: where to load it (default CPU); dtype: e.g. ``"bfloat16"``.
        name: the model name in the replay keys (default ``hf:<id>``, or ``hf:<folder name>`` for a local folder).
    """

    def __init__(self, model_id: str, model=None, tokenizer=None, device: str | torch.device | None = None,
                 dtype: str | None = None, name: str | None = None):
        if model is None or tokenizer is None:
            model, tokenizer = load_causal_lm(model_id, device, dtype)
        self.model, self.tokenizer = model, tokenizer
        self.name = name or _key_name(model_id)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        """The text the model continues: the chat template when the tokenizer has one, else the joined contents."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages)

    def decoder_layers(self) -> torch.nn.ModuleList:
        """The model's list of transformer blocks (for hooks): Llama/Qwen/Mistral ``model.layers``, GPT-2 ``h``."""
        for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
            obj = self.model
            for part in path.split("."):
                obj = getattr(obj, part, None)
            if isinstance(obj, torch.nn.ModuleList):
                return obj
        raise AttributeError(f"{self.name}: cannot find the decoder layers of {type(self.model).__name__}")

    def generation_kwargs(self, sampling: dict[str, Any]) -> dict[str, Any]:
        """``generate()`` keyword arguments for filled-in sampling settings."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        kwargs = {"max_new_tokens": sampling["max_tokens"], "num_return_sequences": sampling["n"],
                  "pad_token_id": pad, "do_sample": sampling["temperature"] > 0}
        if kwargs["do_sample"]:
            kwargs.update(temperature=sampling["temperature"], top_p=sampling["top_p"], top_k=sampling["top_k"])
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)  # silence the model's sampling defaults
        return kwargs

    @torch.no_grad()
    def generate(self, messages: list[dict[str, str]], **sampling: Any) -> list[str]:
        """n completions (new tokens only, special tokens skipped, cut at the stop strings)."""
        messages, sampling = check_messages(messages), fill_sampling(sampling)
        templated = bool(getattr(self.tokenizer, "chat_template", None))  # the template writes its own BOS
        enc = self.tokenizer(self.prompt_text(messages), return_tensors="pt", add_special_tokens=not templated)
        enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        accel = self.device.type != "cpu"  # fork (and restore) the accelerator's RNG too
        with torch.random.fork_rng(devices=[self.device.index or 0] if accel else [],
                                   device_type=self.device.type if accel else "cuda"):
            torch.manual_seed(sampling["seed"])
            out = self.model.generate(**enc, **self.generation_kwargs(sampling))  # (n, L + new)
        new = out[:, enc["input_ids"].shape[1]:]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [cut_at_stop(t, sampling["stop"]) for t in texts]
