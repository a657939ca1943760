"""``ctta list`` tells apart the components one module registers: each gets its builder's docstring sentence
(promptcam and promptcam_online, tfup and tfup_t showed their module's one sentence twice)."""

from ctta.runner.listing import component_lines


def _summaries(kind):
    return {line.split()[0]: line.split(None, 1)[1] for line in component_lines(kind)}


def test_components_sharing_a_module_have_distinct_summaries():
    s = _summaries("strategy")
    assert s["promptcam"] != s["promptcam_online"] and "online" in s["promptcam_online"]
    assert s["tfup"] != s["tfup_t"] and s["coop_atp"] != s["maple_atp"]
    scenarios = _summaries("scenario")
    assert scenarios["multilabel"] != scenarios["multilane_cil"]
    assert s["cupl"] == "CuPL: customized prompts via language models"  # one per module: the module's sentence
