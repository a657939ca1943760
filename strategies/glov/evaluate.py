"""GLOV evaluation with its discovered prompts (Mirza et al., "GLOV: Guided Large Language Models as Implicit
Optimizers for Vision Language Models", arXiv 2410.06154): a template ensemble on a frozen CLIP.

Reference (read, re-implemented, nothing copied): jmiemirza/GLOV@4c4fe64 ``trainers/zero_shot_gpt.py``
(``text_emb: glov`` = ``lov_guidance_templates_clip``, ``glov_wo_guidance`` = ``lov_templates_clip``; per class the
filled templates are encoded, each normalised, averaged and re-normalised) with the prompts of
``utils/discovered_prompts.py`` (user-supplied: no licence; ``discovered.py``).

Strategy ``glov`` (a ``ZeroShotTemplate``: nothing trains): ``prompts`` = the user's copy of GLOV's file (or a JSON
list of templates), ``guidance`` picks the list, ``dataset`` the entry (a key of the dict or a ctta dataset name).
Few-shot / base-to-new / cross-dataset streams rebuild the head per stream; class-incremental streams use the
classes seen so far; a test-time benchmark is evaluated directly (``ZeroShotTemplate``).

Deviations: templates are filled by GLOV's rule (``discovered.fill_template``) and encoded by ctta's tokenizer with
its truncation (GLOV: ``clip.tokenize(truncate=True)``, the same 77 tokens); the run's CLIP is any ctta CLIP (GLOV's
paper numbers: ViT-B/32).
"""

from __future__ import annotations

from dataclasses import dataclass

from ctta.strategies.glov.discovered import fill_template, load_templates

from ctta.clip_prompting.zero_shot import TextHeadModel, ZeroShotConfig, ZeroShotTemplate, text_cache_of
from ctta.registry import STRATEGIES

__all__ = ["GLOV", "GLOVConfig", "ensemble_texts_for"]


def ensemble_texts_for(templates: list[str]):
    """``texts_for``: each class gets every template GLOV's rule fills for it (in file order).

    Raises:
        ValueError: no template fills a class (GLOV would encode an empty list).
    """
    templates = list(templates)

    def texts_for(classnames: list[str]) -> list[list[str]]:
        out = []
        for name in classnames:
            texts = [t for t in (fill_template(tpl, name.replace("_", " ")) for tpl in templates) if t is not None]
            if not texts:
                raise ValueError(f"no template has a class slot '{{}}' for {name!r}: {templates[:3]}")
            out.append(texts)
        return out

    return texts_for


@dataclass(frozen=True)
class GLOVConfig(ZeroShotConfig):
    """GLOV evaluation: the user's ``discovered_prompts.py`` (or a JSON template list) and which list to use."""

    prompts: str = ""  # GLOV's utils/discovered_prompts.py (user copy) or a .json list of templates
    guidance: bool = True  # lov_guidance_templates_clip (GLOV) / lov_templates_clip (GLOV without guidance)
    dataset: str = ""  # the entry: a key of the dict (e.g. EuroSAT) or a ctta dataset name (e.g. eurosat)


@STRATEGIES.register("glov", config=GLOVConfig)
class GLOV(ZeroShotTemplate):
    """GLOV's discovered prompts as a template-ensemble zero-shot classifier."""

    config_class = GLOVConfig

    @classmethod
    def check_resources(cls, cfg: GLOVConfig) -> None:
        """The prompt file resolves and holds the dataset's entry (read as literals, nothing loads)."""
        cls.templates(cfg)

    @staticmethod
    def templates(cfg: GLOVConfig) -> list[str]:
        """The discovered templates ``cfg`` names (``load_templates``)."""
        if not cfg.prompts:
            raise ValueError("glov needs prompts: the path of GLOV's utils/discovered_prompts.py (your copy from "
                             "https://github.com/jmiemirza/GLOV) or a JSON list of templates")
        return load_templates(cfg.prompts, cfg.dataset, cfg.guidance)

    @classmethod
    def build_prompted(cls, clip_model, tokenizer, classnames: list[str], cfg: GLOVConfig) -> TextHeadModel:
        templates = cls.templates(cfg)
        return TextHeadModel(clip_model, tokenizer, classnames, ensemble_texts_for(templates),
                             cache=text_cache_of(cfg))
