"""GLOV (strategies/glov): the safe reader of discovered_prompts.py, the fill rule and template ensemble, the
meta-prompt, the hidden-state steering hook on a tiny random causal LM, and the recorded guided search."""

import json

import pytest
import torch
from ctta.strategies.glov.discovered import fill_template, glov_dataset_key, load_templates, read_prompt_dicts
from ctta.strategies.glov.evaluate import GLOV, GLOVConfig, ensemble_texts_for
from ctta.strategies.glov.meta_prompt import MetaPrompt, parse_answer, top_bottom
from ctta.strategies.glov.search import GuidedLM, guidance_pair, run_glov_search, top_templates
from ctta.strategies.glov.steering import layer_mean_hidden, steering_hook, steering_vector, vector_digest

from ctta.clip_prompting.llm_search import Scored
from ctta.llm import LLMReplayMissing, ReplayingLM, ReplayLog, make_llm, request_key
from tests.helpers import ROOT, llm_search_on_class_incremental, run_smoke

SMOKE_PROMPTS = ROOT / "configs/smoke/data/glov_discovered_prompts.py"

GLOV_LIKE = '''
# a comment
"""a docstring"""
lov_templates_clip = {
    'EuroSAT': ['"A Sentinel-2 view of {}, as \\'seen\\' from orbit"', 'a {} with <texture> and {shape}'],
}
lov_guidance_templates_clip = {"EuroSAT": ["a satellite image of {}. Please replace {} with the class"]}
other = ('x', 1)
'''


def _write(tmp_path, text, name="discovered_prompts.py"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_parser_keeps_strings_verbatim_and_picks_the_list(tmp_path):
    path = _write(tmp_path, GLOV_LIKE)
    values = read_prompt_dicts(path)
    assert values["other"] == ("x", 1)
    assert load_templates(path, "eurosat", guidance=False) == [
        "\"A Sentinel-2 view of {}, as 'seen' from orbit\"", "a {} with <texture> and {shape}"]
    guided = load_templates(path, "EuroSAT", guidance=True)
    assert guided == ["a satellite image of {}. Please replace {} with the class"]


@pytest.mark.parametrize("code", ["import os\nx = {}", "x = __import__('os').getcwd()", "x = [f'{1}']",
                                  "def f():\n    pass", "x = {'a': [str(1)]}", "x = y = 1", "x = [i for i in 'ab']"])
def test_parser_refuses_code(tmp_path, code):
    with pytest.raises(ValueError, match=r"discovered_prompts\.py:\d"):
        read_prompt_dicts(_write(tmp_path, code))


def test_parser_never_executes(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(ValueError):
        read_prompt_dicts(_write(tmp_path, f"open({str(marker)!r}, 'w').write('x')\n"))
    assert not marker.exists()


def test_missing_file_names_where_it_lives(tmp_path):
    with pytest.raises(FileNotFoundError, match="utils/discovered_prompts.py of https://github.com/jmiemirza/GLOV"):
        load_templates(tmp_path / "nope.py", "eurosat")


def test_json_list_and_dataset_names(tmp_path):
    path = _write(tmp_path, json.dumps(["a {}.", "the {}"]), "t.json")
    assert load_templates(path) == ["a {}.", "the {}"]
    assert [glov_dataset_key(n) for n in ("fgvc_aircraft", "oxford_flowers", "pets", "imagenet_r", "FGVCAircraft")] \
        == ["FGVCAircraft", "OxfordFlowers", "OxfordPets", "ImageNetR", "FGVCAircraft"]
    with pytest.raises(KeyError, match="GLOV's datasets"):
        glov_dataset_key("digits")


def test_fill_rule_is_glovs():
    assert fill_template("a {} photo", "cat") == "a cat photo"
    assert fill_template("a {} and {}", "cat") == "a cat and cat"  # every slot filled
    assert fill_template("no slot", "cat") is None
    assert fill_template("a {} with {shape}", "cat") is None  # str.format refuses it: dropped
    assert fill_template("a { } here", "cat") == "a { } here"  # GLOV keeps it unfilled
    texts = ensemble_texts_for(["a {}.", "nothing", "the {} {}"])(["big_cat"])
    assert texts == [["a big cat.", "the big cat big cat"]]


def test_ensemble_equals_recomputation(tiny):
    model, tok = tiny
    cfg = GLOVConfig(prompts=str(SMOKE_PROMPTS), dataset="digits", guidance=True)
    head = GLOV.build_prompted(model, tok, ["zero", "one", "two"], cfg).text_features()
    templates = load_templates(SMOKE_PROMPTS, "digits", True)
    assert len(templates) == 3  # the third has no slot: dropped
    rows = []
    with torch.no_grad():
        for name in ["zero", "one", "two"]:
            e = model.encode_text(tok([t.format(name) for t in templates[:2]])).float()
            e = e / e.norm(dim=-1, keepdim=True)
            rows.append(e.mean(0) / e.mean(0).norm())
    torch.testing.assert_close(head, torch.stack(rows), rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------- meta-prompt
def test_meta_prompt_first_and_later_steps():
    mp = MetaPrompt("EuroSAT", "satellite images of land use", top_bottom=2)
    first = mp.messages([("a photo of a {}.", 40.0)], 0)
    assert [m["role"] for m in first] == ["system", "user"]
    assert "Prompt: a photo of a <category>.\nAccuracy: 40.0" in first[1]["content"]
    history = [("a {}", 10.0), ("b {}", 50.0), ("c {}", 30.0), ("d {}", 70.5), ("e {}", 20.0)]
    user = mp.messages(history, 3)[1]["content"]
    assert "Best Templates:\n1: b <category> --- Accuracy: 50\n2: d <category> --- Accuracy: 70\n" in user
    assert "Worst Templates:\n1: a <category> --- Accuracy: 10\n2: e <category> --- Accuracy: 20\n" in user
    assert "from the last 4 runs" in user
    assert top_bottom(history[:3], 5) == ([("b {}", 50.0)], [("a {}", 10.0)])  # k = min(5, 3 // 2)


def test_parse_answer():
    text = 'Here is a new prompt template: "a photo of a <category> in the wild"\n\nnothing\nA <category>, seen'
    assert parse_answer(text) == ['"a photo of a {} in the wild"', "A {}, seen"]


# ----------------------------------------------------------------------------------------------- steering
WORDS = ["<unk>", "<s>", "</s>", "a", "photo", "of", "the", "<category>", ".", ":", "digit", "number", "image",
         "handwritten", "blurry", "scan", "tiny", "picture", "drawn", "by", "hand", "\n"]


def tiny_causal_lm(seed=0, layers=3):
    """ctta.llm's local backend on a tiny random Llama and a word-level tokenizer (offline, built from configs)."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from ctta.llm.hf import HFCausalLM

    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    config = LlamaConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(seed)
    return HFCausalLM("tiny-llama", model=LlamaForCausalLM(config).eval(), tokenizer=tok)


def _layer_inputs(lm, ids, layer):
    """The input of decoder layer ``layer`` (= output of ``layer - 1``), captured by a pre-hook."""
    seen = []
    hook = lm.decoder_layers()[layer].register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).clone()), with_kwargs=True)
    try:
        with torch.no_grad():
            lm.model(input_ids=ids, use_cache=False)
    finally:
        hook.remove()
    return seen[0]


@pytest.mark.parametrize("layer,alpha", [(0, 1.0), (1, 0.25)])
def test_steering_hook_adds_alpha_delta_at_the_layer(layer, alpha):
    lm = tiny_causal_lm()
    ids = lm.tokenizer("a photo of the digit .", return_tensors="pt")["input_ids"]
    delta = steering_vector(lm, "a photo of a <category> .", "the digit", layer)
    plain = _layer_inputs(lm, ids, layer + 1)
    with steering_hook(lm, layer, delta, alpha):
        steered = _layer_inputs(lm, ids, layer + 1)
        assert lm.model.generation_config.use_cache is False
    assert lm.model.generation_config.use_cache is not False  # restored
    torch.testing.assert_close(steered[0, -1] - plain[0, -1], alpha * delta, rtol=0, atol=1e-6)
    assert torch.equal(steered[:, :-1], plain[:, :-1])  # earlier positions untouched
    assert torch.equal(_layer_inputs(lm, ids, layer), _layer_inputs(lm, ids, layer))  # layers before: untouched
    after = _layer_inputs(lm, ids, layer + 1)
    assert torch.equal(after, plain)  # the hook is gone


def test_steering_vector_is_the_padded_mean_difference():
    lm = tiny_causal_lm()
    delta = steering_vector(lm, "a photo of a <category> .", "the digit", 1)
    ids = lm.tokenizer("a photo of a <category> .", return_tensors="pt")["input_ids"]  # <s> + 6 words
    short = lm.tokenizer("the digit", return_tensors="pt")["input_ids"]  # <s> + 2 words, padded with 4 </s>
    padded = torch.cat([short, torch.full((1, 4), lm.tokenizer.eos_token_id)], dim=1)
    assert padded.shape == ids.shape
    best, worst = _layer_inputs(lm, ids, 2), _layer_inputs(lm, padded, 2)
    torch.testing.assert_close(delta, best[0].mean(0) - worst[0].mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(layer_mean_hidden(lm, "the digit", 1), _layer_inputs(
        lm, lm.tokenizer("the digit", return_tensors="pt")["input_ids"], 2)[0].mean(0), rtol=0, atol=0)
    assert vector_digest(delta) == vector_digest(delta.clone()) != vector_digest(delta * 2)


# ----------------------------------------------------------------------------------------------- guided search
def test_guidance_pair_follows_glov():
    rows = [Scored("i {}", 20.0, 1.0, -1), Scored("a {}", 30.0, 1.0, 0), Scored("b {}", 20.0, 0.5, 0)]
    assert guidance_pair(rows, 20.0) == (("a {}", "b {}"), 30.0)  # runner-up: the latest of the 20s
    assert guidance_pair(rows, 30.0) == (None, 30.0)  # no improvement: the pair stays
    rows.append(Scored("c {}", 30.0, 0.2, 1))
    assert guidance_pair(rows, 25.0)[0] == ("a {}", "b {}")  # ties: the earliest best
    assert top_templates(rows, 3) == ["c {}", "a {}", "b {}"]  # score, then lower loss


def _search(llm, steps=3, alpha=0.5, layer=1):
    guided = GuidedLM(llm, layer=layer, alpha=alpha, guided={"max_tokens": 10}, seed=7)
    opt = run_glov_search(guided, MetaPrompt("digits", "handwritten digits", top_bottom=2),
                          lambda p: (float(len(p.split())), None), "A photo of a {}.", steps, 3,
                          dict(temperature=1.0, top_k=50, top_p=0.9, max_tokens=8))
    return opt, guided


def test_recorded_search_replays_identically_without_a_call(tmp_path):
    log = tmp_path / "glov.jsonl"
    live = ReplayingLM(tiny_causal_lm(), ReplayLog(log))
    opt, guided = _search(live)
    assert live.calls == 3 and guided.records, "the toy score must improve so that guidance starts"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    steered = [r for r in records if "extra" in r]
    assert steered and all(r["extra"]["steering"]["layer"] == 1 and r["sampling"]["max_tokens"] == 10
                           for r in steered)
    assert [r["sampling"]["seed"] for r in records] == [7, 8, 9]

    replay = make_llm("replay", log)
    again, guided_again = _search(replay)
    assert replay.backend is None and replay.calls == 0
    assert again.scored == opt.scored and again.events == opt.events and guided_again.records == guided.records


def test_steering_settings_are_in_the_replay_key(tmp_path):
    log = tmp_path / "glov.jsonl"
    _search(ReplayingLM(tiny_causal_lm(), ReplayLog(log)))
    first = [json.loads(line) for line in log.read_text().splitlines() if "extra" in line][0]
    base = first["extra"]["steering"]
    keys = {request_key(first["model"], first["messages"], first["sampling"], {"steering": {**base, **change}})
            for change in ({}, {"alpha": 0.25}, {"layer": 0}, {"vector_sha256": "0" * 64})}
    assert first["key"] in keys and len(keys) == 4
    for change in (dict(alpha=0.25), dict(layer=0)):  # the same search with other steering settings is not replayed
        with pytest.raises(LLMReplayMissing, match="glov.jsonl"):
            _search(make_llm("replay", log), **change)


def test_guidance_refuses_a_model_without_hidden_states(tmp_path):
    script = tmp_path / "answers.json"
    script.write_text(json.dumps(["a photo of many many words <category>"] * 9))
    with pytest.raises(ValueError, match="steers a local model's hidden states"):
        _search(make_llm(f"scripted:{script}", None))


def test_search_smoke_replays_the_committed_log_with_guidance(tmp_path):
    log = ROOT / "configs/smoke/llm_logs/glov_search_digits.jsonl"
    before = log.read_bytes()
    summary = run_smoke("glov_search_digits", tmp_path, (f"strategy.llm_log={log}",))
    assert log.read_bytes() == before  # pure replay: nothing asked, nothing appended
    guidance = json.loads((tmp_path / "glov_guidance.json").read_text())
    history = json.loads((tmp_path / "search_history.json").read_text())
    assert guidance and {g["layer"] for g in guidance} == {1} and all(len(g["vector_sha256"]) == 64 for g in guidance)
    assert history[0]["candidate"] == "A photo of a {}." and max(r["score"] for r in history) > history[0]["score"]
    assert summary["base_acc"] > 0.8 and summary["new_acc"] > 0.8  # the shipped trained CLIP, not chance


def test_steered_generation_recomputes_every_position():
    """GLOV re-runs the whole sequence at each new token (the offset only ever on the last position): the hook
    switches the generation cache off, then restores it."""
    lm = tiny_causal_lm()
    lengths = []
    hook = lm.decoder_layers()[0].register_forward_pre_hook(
        lambda m, args, kwargs: lengths.append((args[0] if args else kwargs["hidden_states"]).shape[1]),
        with_kwargs=True)
    ask = dict(n=1, max_tokens=4, temperature=0.0)
    messages = [{"role": "user", "content": "a photo of the digit"}]
    plain = lm.generate(messages, **ask)
    assert lengths[1:] == [1] * (len(lengths) - 1)  # cached: one new position per step
    lengths.clear()
    with steering_hook(lm, 1, 5 * torch.ones(16), 1.0):
        steered = lm.generate(messages, **ask)
    hook.remove()
    assert lengths == list(range(lengths[0], lengths[0] + len(lengths))) and len(lengths) > 1
    assert steered != plain


def test_class_incremental_search_head_and_unseen_classes(tiny, tmp_path):
    answers = ["a handwritten <category>", "the digit <category>, scanned"]
    strategy, bench = llm_search_on_class_incremental("glov_search", tiny, answers, tmp_path, steps=1, per_step=1,
                                                      guidance=False, ensemble=2)
    strategy.train(bench.train_stream[0])
    found = strategy.templates
    assert len(found) == 2 and set(found) <= {"A photo of a {}.", "a handwritten {}"}
    seen = list(strategy.model.classnames)
    assert strategy.texts_for(seen) == [[t.format(n) for t in found] for n in seen]
    assert strategy.fallback_texts("nine") == [t.format("nine") for t in found]  # unsearched classes: same templates
    strategy.train(bench.train_stream[1])  # a new search over the classes seen so far
    assert [r["step"] for r in strategy.history.rows] == [-1, 0, -1, 0]
