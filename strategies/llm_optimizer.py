"""Language models as black-box optimizers of CLIP prompts (Liu et al., "Language Models as Black-Box Optimizers for
Vision-Language Models", CVPR 2024). Official code: shihongl1998/LLM-as-a-blackbox-optimizer@6612c84
``auto_prompt_image_classification.py:main``, ``prompt_pool.py:get_message``, ``utils.py:{validate_message,
getTopBotK, get_best5_average, eval}``, ``init_templates.py``, ``load_laioncoco_templates.py`` (no licence file:
behaviour read, re-implemented, no code, prompt wording or data copied; spec ``remaining-seed-systems.md`` C6).

The search (``ctta.clip_prompting.llm_search.PromptOptimizer``): the initial pool (the 80 CLIP ImageNet templates,
``init_templates: clip80``, or the user's LAION-COCO caption templates, one per line, ``init_templates: FILE``,
optionally sampled: ``laion_sample_size`` templates drawn with ``random.Random(laion_seed)``, as the reference's
``load_laioncoco_templates.py`` draws from its 1M-caption file) is scored by 1-shot *training* accuracy of the
zero-shot head ``template.format(class)``. Each of ``steps`` (10) iterations shows the chat model
(gpt-3.5-turbo-0301, temperature 1) one user message with the ``top_k`` (3) best templates and the ``top_k`` worst
(worst first) and asks for ``n_templates`` (1) better template: under 15 words, a similar structure, each template on
its own line starting with ``"- "``. A response whose ``"- "`` lines include one without ``{}`` or one that
``str.format`` refuses, or that has no such line, is asked again (at most ``max_tries`` (15) calls); every template of a
valid response is scored unless already scored. Logged as the reference does: the mean training accuracy of the 5
best templates before each iteration (``best5`` rows of the history; also ``best5_final``). The head uses the
best template (highest training accuracy; ties: the earlier one).

Protocols: few-shot (the paper's: 1 shot, all classes) and base-to-new (search on base, evaluate base and new); a
class-incremental stream runs a new search per training experience over the classes seen so far, its pool = the
initial pool plus every template found so far (scored again on the new data).

Deviations: the reference's default ``--prompt_method good_bad_better`` is not defined in ``get_message`` (only
``method_1``), so the default run crashes; ctta uses ``method_1``'s content, in its own wording (``message``
overrides it: ``{n}``, ``{good}``, ``{bad}`` are filled); a language-model error is raised, not retried (the
reference retries any exception, which would hide a missing replay entry); a step whose ``max_tries`` responses were
all invalid adds nothing (the reference crashes iterating ``None``); accuracies are in percent; the pool is ``80
CLIP templates`` for every dataset (the reference's ``openai`` pool is a per-dataset selection, ``coop`` CoOp's
per-dataset hand prompt).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from ctta.clip_prompting.llm_search import Scored

__all__ = ["BLACKBOX_MESSAGE", "best5_average", "blackbox_message", "load_template_file", "parse_templates",
           "top_bottom"]

BLACKBOX_REPO = "shihongl1998/LLM-as-a-blackbox-optimizer@6612c84"
BLACKBOX_MESSAGE = (
    "I have two lists of prompt templates for image classification: good ones and bad ones. Some characteristics make "
    "a template good or bad. Using them, write {n} better template.\n"
    "Good templates:\n{good}\n\n"
    "Bad templates:\n{bad}\n\n"
    "Requirements:\n"
    "- Reply with the template only.\n"
    "- The template has fewer than 15 words.\n"
    "- The template has a structure similar to the templates above.\n"
    "- Write each template on its own line, starting with '- '.\n"
)


def ranked(scored: Sequence[Scored]) -> list[Scored]:
    """Best first by score; equal scores keep their order (the reference's stable descending sort)."""
    return sorted(scored, key=lambda s: -s.score)


def top_bottom(scored: Sequence[Scored], k: int = 3) -> tuple[list[str], list[str]]:
    """The ``k`` best templates (best first) and the ``k`` worst (worst first)."""
    order = [s.prompt for s in ranked(scored)]
    return order[:k], order[::-1][:k]


def blackbox_message(scored: Sequence[Scored], k: int = 3, n: int = 1, message: str = BLACKBOX_MESSAGE) -> str:
    """The request: ``message`` filled with the top-``k`` and bottom-``k`` templates, one per line."""
    good, bad = top_bottom(scored, k)
    return message.format(n=n, good="\n".join(good), bad="\n".join(bad))


def parse_templates(text: str) -> list[str]:
    """The templates of a response: every line starting with ``"- "`` (the rest of it); ``[]`` (invalid) when there
    is none, or when one lacks ``{}`` or cannot be formatted with one class name."""
    out = []
    for line in text.splitlines():
        if not line.startswith("- "):
            continue
        template = line[2:]
        if "{}" not in template:
            return []
        try:
            template.format("test")
        except (IndexError, KeyError, ValueError):
            return []
        out.append(template)
    return out


def best5_average(scored: Sequence[Scored]) -> float | None:
    """Mean score of the 5 best templates (None with fewer than 5, when the reference logs nothing)."""
    top = ranked(scored)[:5]
    return sum(s.score for s in top) / 5 if len(top) == 5 else None


def load_template_file(path: str | Path, sample_size: int = 0, seed: int = 0) -> list[str]:
    """Templates from a text file (one per line, stripped); ``sample_size`` > 0 draws that many with
    ``random.Random(seed).sample`` before empty lines are dropped (the reference's LAION-COCO draw, same order).

    Raises:
        FileNotFoundError: naming the file and where the reference's LAION-COCO templates come from.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"template file {p} not found: the LAION-COCO templates of {BLACKBOX_REPO} are "
            "laion_coco_results/laion_coco_samples_size_80_seed_<seed>.txt, sampled by its load_laioncoco_templates.py "
            "from laion_coco_1M_seed_0.txt (a download linked in that script); pass your file (one template per line)"
        )
    templates = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    if sample_size:
        templates = random.Random(seed).sample(templates, min(sample_size, len(templates)))
    return [t for t in templates if t]
