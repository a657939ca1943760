"""GLOV (Mirza et al., arXiv 2410.06154; jmiemirza/GLOV@4c4fe64, no licence: nothing of it is shipped).

* ``evaluate.py``: strategy ``glov``, the discovered prompts (user's ``utils/discovered_prompts.py``, read safely by
  ``discovered.py``) as a template ensemble on a frozen CLIP.
* ``search.py``: strategy ``glov_search``, GLOV's LLM-in-the-loop search (``ctta.clip_prompting.llm_search``) with a
  local causal LM and hidden-state guidance (``steering.py``), or a replayed log; ``meta_prompt.py`` builds its
  requests and parses the answers.
"""

from ctta.strategies.glov.discovered import GLOV_DATASETS, fill_template, load_templates, read_prompt_dicts
from ctta.strategies.glov.evaluate import GLOV, GLOVConfig, ensemble_texts_for
from ctta.strategies.glov.search import GLOVSearch, GLOVSearchConfig

__all__ = ["GLOV", "GLOVConfig", "GLOVSearch", "GLOVSearchConfig", "GLOV_DATASETS", "ensemble_texts_for",
           "fill_template", "load_templates", "read_prompt_dicts"]
