"""GLOV's meta-prompt (the LLM's input each step) and the parser of its answers.

Reference (structure read, wording re-written; no prompt text copied): jmiemirza/GLOV@4c4fe64
``utils/opt_utils.py:generate_meta_prompt_llama`` and ``utils/llm_opt_helpers.py:parse_json_respones``.

* Messages: a system message (the assistant helps find prompt templates for zero-shot CLIP classification) and a user
  message with the dataset name and description and either (step 0) the initial template with its accuracy or the
  top-k and bottom-k templates so far (k = min(top_bottom, half the history), accuracies shown as integers, the
  history sorted by ascending accuracy; lines ``"<i>: <template> --- Accuracy: <acc>"``), asking for one new template
  with the class slot written ``<category>`` and nothing else in the answer.
* Parsing (GLOV's Llama branch): every line of an answer, the text after its last ``:``, ``<category>`` -> ``{}``.

Deviations: the wording is ctta's own (GLOV's text has no licence); a user can pass the exact wording in a YAML/JSON
file (``meta_prompt_file`` with ``system``, ``first`` and ``later`` strings using the fields below); parsed lines are
stripped and kept only when they hold a class slot (GLOV keeps every line, and an empty line breaks its scorer); the
first step's accuracy is rounded to 2 decimals (GLOV prints the raw float: float noise would change replay keys).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MetaPrompt", "parse_answer", "to_category", "top_bottom"]

SLOT = "<category>"

SYSTEM = ("You are an assistant that helps find prompt templates which embed class names for zero-shot image "
          "classification with CLIP.")
FIRST = ("Below are a dataset name, its description, one prompt template and the classification accuracy CLIP "
         "reaches with it. Write one new prompt template in the same format, keeping the {slot} placeholder where "
         "the class name goes, so that the accuracy increases. Use the description to tailor the template to the "
         "dataset.\n\nDataset: {dataset}\nDescription: {description}\nPrompt: {prompt}\nAccuracy: {accuracy}\n"
         "Answer with the template only.")
LATER = ("Below are a dataset name, its description, and the {k} best and {k} worst prompt templates with their "
         "accuracies from the last {runs} runs. Write one new prompt template in the same format, keeping the {slot} "
         "placeholder where the class name goes, so that the accuracy increases; use the good and the bad examples "
         "as context.\n\nDataset: {dataset}\nDescription: {description}\nBest Templates:\n{best}\n"
         "Worst Templates:\n{worst}\nAnswer with the template only.")


def to_category(template: str) -> str:
    """A ``{}`` template in the LLM's ``<category>`` notation."""
    return template.replace("{}", SLOT)


def top_bottom(history: Sequence[tuple[str, float]], k: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """GLOV's examples: history sorted by ascending score (stable), the last k (best) and first k (worst),
    with k = min(k, len // 2)."""
    ranked = sorted(history, key=lambda item: item[1])
    k = min(k, len(ranked) // 2)
    return ranked[len(ranked) - k:], ranked[:k]


def _lines(items: Sequence[tuple[str, float]]) -> str:
    rows = (f"{i + 1}: {to_category(text)} --- Accuracy: {int(score)}\n" for i, (text, score) in enumerate(items))
    return "".join(rows)


@dataclass(frozen=True)
class MetaPrompt:
    """Builds GLOV's chat messages for one step (``system``/``first``/``later`` are format strings)."""

    dataset: str
    description: str
    top_bottom: int = 5
    system: str = SYSTEM
    first: str = FIRST
    later: str = LATER

    @classmethod
    def from_file(cls, path: str | Path, **fields) -> MetaPrompt:
        """Wording from a JSON file ``{"system": ..., "first": ..., "later": ...}`` (e.g. the user's own copy)."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        unknown = set(data) - {"system", "first", "later"}
        if unknown:
            raise ValueError(f"{path}: unknown meta-prompt keys {sorted(unknown)}")
        return cls(**fields, **data)

    def messages(self, history: Sequence[tuple[str, float]], step: int) -> list[dict[str, str]]:
        """Messages for ``step`` (0: the first template and its accuracy; later: top/bottom k of ``history``).

        Args:
            history: every (template with ``{}``, accuracy in percent) evaluated so far, in evaluation order.
            step: the global step (0-based); GLOV says "the last step + 1 runs".
        """
        common = dict(dataset=self.dataset, description=self.description, slot=SLOT)
        if step == 0:
            prompt, accuracy = history[0]
            user = self.first.format(prompt=to_category(prompt), accuracy=round(accuracy, 2), **common)
        else:
            best, worst = top_bottom(history, self.top_bottom)
            user = self.later.format(k=len(best), runs=step + 1, best=_lines(best), worst=_lines(worst), **common)
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


def parse_answer(text: str) -> list[str]:
    """Templates in an answer: per line the text after the last ``:``, ``<category>`` -> ``{}``; lines without a
    class slot are dropped."""
    found = []
    for line in text.split("\n"):
        template = line.split(":")[-1].strip().replace(SLOT, "{}")
        if "{}" in template:
            found.append(template)
    return found
