"""GLOV's hidden-state guidance: a steering vector from two prompts, added at one decoder layer during generation.

Reference (read, re-implemented): jmiemirza/GLOV@4c4fe64 ``trainers/llama_model.py:LlamaModel.{get_base_embeddings,
prepare_prompts,manipulate_embeddings}`` and ``modeling_llama.py`` (``mean_emb_guidance``), run with
``scripts/clip_opt.sh`` (``specific_layer_diff`` + ``mean_emb``, ``diff_layer`` 17, alpha in {1.0, 0.75, 0.5, 0.25}).

* Each prompt template (``<category>`` form) is tokenised with the model's special tokens; the shorter one is padded
  on the right with ``<|eot_id|>`` (GLOV's pad; the end-of-sequence token text for a model without it) so both have
  the same length.
* ``h(p)`` = mean over tokens of the output of decoder layer ``layer`` (0-based; GLOV's ``hidden_states[1:][17]``).
* Steering vector ``d = h(best) - h(negative)``; during generation ``alpha * d`` is added to the layer's output at the
  last position of every forward pass (GLOV recomputes the whole sequence each step without a cache, so earlier
  positions are never offset twice; a cached generation offsets each new token once as well).

``lm`` below is ``ctta.llm``'s local backend (``HFCausalLM``: ``model``, ``tokenizer``, ``decoder_layers()``), so the
hook works on any transformers causal LM it loads (Llama, Qwen, GPT-2, ...). While steering, the model's generation
cache is switched off (``generation_config.use_cache``) to recompute every position each step, as GLOV does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["layer_mean_hidden", "steering_vector", "steering_hook", "vector_digest"]


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_hidden(output, hidden: torch.Tensor):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@torch.no_grad()
def layer_mean_hidden(lm, text: str, layer: int) -> torch.Tensor:
    """Mean over tokens of decoder layer ``layer``'s output for ``text`` (special tokens added): ``(H,)`` float32."""
    captured: list[torch.Tensor] = []
    handle = lm.decoder_layers()[layer].register_forward_hook(lambda m, i, o: captured.append(_hidden(o)))
    try:
        ids = lm.tokenizer(text, return_tensors="pt")["input_ids"].to(lm.device)
        lm.model(input_ids=ids, use_cache=False)
    finally:
        handle.remove()
    return captured[0][0].float().mean(dim=0)  # (T, H) -> (H,)


def _pad_pair(tokenizer, first: str, second: str) -> tuple[str, str]:
    """Right-pad the shorter text to the same token count with Llama-3's ``<|eot_id|>`` (GLOV's pad) when the
    vocabulary has it, else the end-of-sequence token text."""
    pad = "<|eot_id|>" if "<|eot_id|>" in tokenizer.get_vocab() else (tokenizer.eos_token or "")

    def length(text: str) -> int:
        return len(tokenizer(text)["input_ids"])

    target = max(length(first), length(second))
    return first + pad * (target - length(first)), second + pad * (target - length(second))


def steering_vector(lm, positive: str, negative: str, layer: int) -> torch.Tensor:
    """``h(positive) - h(negative)`` at ``layer`` after padding both to one length: ``(H,)`` float32."""
    positive, negative = _pad_pair(lm.tokenizer, positive, negative)
    return layer_mean_hidden(lm, positive, layer) - layer_mean_hidden(lm, negative, layer)


def vector_digest(vector: torch.Tensor) -> str:
    """SHA-256 of the vector's float32 bytes (part of the replay key of a steered request)."""
    data = vector.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()


@contextmanager
def steering_hook(lm, layer: int, vector: torch.Tensor, alpha: float) -> Iterator[None]:
    """While active, every forward adds ``alpha * vector`` to the last position of decoder layer ``layer``'s output
    (and generation recomputes every position: no cache)."""

    def add(module, inputs, output):
        hidden = _hidden(output)
        offset = torch.zeros_like(hidden)
        offset[:, -1, :] = (alpha * vector).to(hidden.dtype)
        return _replace_hidden(output, hidden + offset)

    config = getattr(lm.model, "generation_config", None)
    cached = getattr(config, "use_cache", None)
    handle = lm.decoder_layers()[layer].register_forward_hook(add)
    if config is not None:
        config.use_cache = False
    try:
        yield
    finally:
        handle.remove()
        if config is not None:
            config.use_cache = cached
