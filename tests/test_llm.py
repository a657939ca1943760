"""ctta.llm: request keys, record and replay (no call with a complete log), the scripted, hf and OpenAI-compatible
backends (tiny offline model, local stub server) and the text scorers against direct computations."""

from __future__ import annotations

import http.server
import itertools
import json
import math
import sys
import threading

import pytest
import torch

from ctta.llm import LLMReplayMissing, ReplayingLM, ReplayLog, make_llm, request_key
from ctta.llm.backends import ScriptedLM
from ctta.llm.scoring import CausalLMScorer, UnigramPrior, tokenize_fn

ASK = [{"role": "system", "content": "You write prompts."}, {"role": "user", "content": "Improve: a photo of a {}."}]


class RaisingLM:
    """A live backend that must never be called."""

    name = "scripted:answers.json"

    def generate(self, messages, **sampling):
        raise AssertionError("a live call was made although the log holds the answer")


def _script(tmp_path, entries, name="answers.json"):
    path = tmp_path / name
    path.write_text(json.dumps(entries))
    return path


def _record(tmp_path, entries=("a photo of a {}.", "a picture of a {}.", "an image of a {}.")):
    log = tmp_path / "log.jsonl"
    llm = make_llm(f"scripted:{_script(tmp_path, list(entries))}", log)
    answers = [llm.generate(ASK, temperature=1.0), llm.generate(ASK[1:], n=2, seed=3)]
    return log, answers, llm


# ------------------------------------------------------------------------------------------------------------ keys
def test_key_fills_defaults_and_normalises_numbers():
    base = request_key("m", ASK, {})
    assert request_key("m", ASK, {"temperature": 1, "n": 1.0, "stop": []}) == base
    assert request_key("m", [dict(reversed(list(m.items()))) for m in ASK], {}) == base  # dict order is irrelevant
    assert request_key("m", ASK, {"temperature": 0.7}) != base
    assert request_key("other", ASK, {}) != base
    assert request_key("m", ASK, {}, extra={"alpha": 0.5}) != base
    with pytest.raises(ValueError, match="unknown sampling settings.*temprature"):
        request_key("m", ASK, {"temprature": 1.0})


# ---------------------------------------------------------------------------------------------- record and replay
def test_record_then_replay_is_identical_and_makes_no_call(tmp_path):
    log, answers, recorder = _record(tmp_path)
    assert answers == [["a photo of a {}."], ["a picture of a {}.", "an image of a {}."]] and recorder.calls == 2
    before = log.read_bytes()
    records = [json.loads(line) for line in before.decode().splitlines()]
    assert [r["occurrence"] for r in records] == [0, 0] and records[1]["sampling"]["n"] == 2
    assert set(records[0]) == {"key", "occurrence", "model", "messages", "sampling", "responses", "timestamp"}
    assert records[0]["key"] == request_key("scripted:answers.json", ASK, {"temperature": 1.0})

    replay = make_llm("replay", log)
    assert replay.name == "scripted:answers.json"
    assert [replay.generate(ASK, temperature=1.0), replay.generate(ASK[1:], n=2, seed=3)] == answers
    live = ReplayingLM(RaisingLM(), ReplayLog(log))  # a live backend is not asked when the log answers
    assert [live.generate(ASK), live.generate(ASK[1:], n=2, seed=3)] == answers and live.calls == 0
    assert log.read_bytes() == before  # replaying writes nothing


def test_missing_replay_entry_names_log_key_and_request(tmp_path):
    log, _, _ = _record(tmp_path)
    replay = make_llm("replay", log)
    other = [{"role": "user", "content": "Write   ten new\nprompts for flowers please"}]
    with pytest.raises(LLMReplayMissing) as err:
        replay.generate(other)
    message = str(err.value)
    key = request_key("scripted:answers.json", other, {})
    assert "\n" not in message and str(log) in message and key in message
    assert "'Write ten new prompts for flowers please'" in message
    with pytest.raises(LLMReplayMissing, match="occurrence 1"):  # the log holds one answer to ASK, not two
        replay.generate(ASK, temperature=1.0)
        replay.generate(ASK, temperature=1.0)


def test_repeated_requests_are_told_apart_by_occurrence(tmp_path):
    log = tmp_path / "log.jsonl"
    llm = make_llm(f"scripted:{_script(tmp_path, ['one', 'two', 'three'])}", log)
    assert [llm.generate(ASK) for _ in range(3)] == [["one"], ["two"], ["three"]]
    assert [json.loads(line)["occurrence"] for line in log.read_text().splitlines()] == [0, 1, 2]
    replay = make_llm("replay", log)
    assert [replay.generate(ASK) for _ in range(3)] == [["one"], ["two"], ["three"]]


def test_truncated_last_line_is_ignored_with_a_warning_and_cut_before_appending(tmp_path):
    log, answers, _ = _record(tmp_path)
    complete = log.read_bytes()
    log.write_bytes(complete + b'{"key": "abc", "occurr')  # a run killed mid-write
    with pytest.warns(UserWarning, match="truncated last line"):
        replay = make_llm("replay", log)
    assert replay.generate(ASK, temperature=1.0) == answers[0]
    with pytest.warns(UserWarning, match="truncated last line"):
        llm = ReplayingLM(ScriptedLM(_script(tmp_path, ["new"], "more.json")), ReplayLog(log))
    assert llm.generate([{"role": "user", "content": "another"}]) == ["new"]
    lines = log.read_bytes().split(b"\n")
    assert log.read_bytes().startswith(complete) and len(lines) == 4 and lines[-1] == b""
    assert json.loads(lines[2])["responses"] == ["new"]


def test_a_damaged_middle_line_is_an_error(tmp_path):
    log, _, _ = _record(tmp_path)
    log.write_bytes(b"not json\n" + log.read_bytes())
    with pytest.raises(ValueError, match="line 1 is not a JSON record"):
        ReplayLog(log)


def test_pure_replay_needs_a_log_and_a_model_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_llm("replay", tmp_path / "none.jsonl")
    with pytest.raises(ValueError, match="unknown language model"):
        make_llm("gpt4", None)


# --------------------------------------------------------------------------------------------------------- scripted
def test_scripted_backend_takes_entries_in_order_and_names_the_request_when_it_runs_out(tmp_path):
    llm = make_llm(f"scripted:{_script(tmp_path, [['x', 'y'], 'p STOP q', 'z'])}", None)
    assert llm.generate(ASK, n=2) == ["x", "y"]
    assert llm.generate(ASK, stop="STOP") == ["p "]
    with pytest.raises(LookupError, match="ran out of canned responses after 2 of 3.*'Improve: a photo of a"):
        llm.generate(ASK, n=2)


# --------------------------------------------------------------------------------------------------------------- hf
def _tiny_hf():
    """A random one-layer GPT-2 over a 13-word vocabulary, with a word-level tokenizer built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["<eos>", "<pad>", "a", "photo", "of", "the", "cat", "dog", "user", "assistant", ":", ".", "hello"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(words), n_positions=64, n_embd=16, n_layer=1, n_head=2, bos_token_id=0,
                        eos_token_id=0)
    return GPT2LMHeadModel(config).eval(), tokenizer


def test_hf_backend_is_seeded_records_and_replays(tmp_path):
    pytest.importorskip("transformers")
    model, tokenizer = _tiny_hf()
    log = tmp_path / "hf.jsonl"
    llm = make_llm("hf:tiny-gpt2", log, model=model, tokenizer=tokenizer)
    ask = [{"role": "user", "content": "a photo of"}]
    first = llm.generate(ask, n=2, max_tokens=6, seed=1)
    assert len(first) == 2 and llm.calls == 1
    torch.manual_seed(123)  # the global RNG neither sets the answer nor is consumed by the call
    state = torch.get_rng_state()
    assert llm.backend.generate(ask, n=2, max_tokens=6, seed=1) == first
    assert torch.equal(torch.get_rng_state(), state)
    greedy = llm.generate(ask, temperature=0, max_tokens=4)
    assert greedy == llm.backend.generate(ask, temperature=0, max_tokens=4, seed=9)  # greedy ignores the seed
    steered = llm.generate(ask, key_extra={"layer": 0, "alpha": 0.5}, n=2, max_tokens=6, seed=1)
    assert llm.calls == 3 and len(log.read_text().splitlines()) == 3  # key_extra made a new key
    replay = make_llm("replay", log)
    assert replay.generate(ask, n=2, max_tokens=6, seed=1) == first
    assert replay.generate(ask, key_extra={"layer": 0, "alpha": 0.5}, n=2, max_tokens=6, seed=1) == steered
    assert llm.backend.decoder_layers() is model.transformer.h


def test_hf_backend_loads_a_local_folder_and_keys_it_by_the_folder_name(tmp_path):
    pytest.importorskip("transformers")
    model, tokenizer = _tiny_hf()
    folder = tmp_path / "models" / "tiny-gpt2"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    llm = make_llm(f"hf:{folder}", tmp_path / "log.jsonl")
    assert llm.name == "hf:tiny-gpt2"  # the key does not depend on where the copy lies
    ask = [{"role": "user", "content": "a photo of"}]
    direct = make_llm("hf:tiny", None, model=model, tokenizer=tokenizer)
    assert llm.generate(ask, max_tokens=5, seed=2) == direct.generate(ask, max_tokens=5, seed=2)
    loaded = CausalLMScorer.from_pretrained(str(folder), add_eos=True)
    assert loaded.log_prob("the cat") == pytest.approx(CausalLMScorer(model, tokenizer, True).log_prob("the cat"))


def test_hf_backend_applies_the_chat_template_when_the_tokenizer_has_one():
    pytest.importorskip("transformers")
    from ctta.llm.hf import HFCausalLM

    model, tokenizer = _tiny_hf()
    llm = HFCausalLM("tiny", model=model, tokenizer=tokenizer)
    assert llm.prompt_text(ASK) == "You write prompts.\n\nImprove: a photo of a {}."
    tokenizer.chat_template = "{% for m in messages %}{{ m.role }} : {{ m.content }} {% endfor %}assistant :"
    assert llm.prompt_text([{"role": "user", "content": "hello"}]) == "user : hello assistant :"


def test_hf_loading_failures_name_the_extra_or_the_local_folder(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from ctta.extras import MissingExtraError
    from ctta.llm.hf import load_causal_lm

    with pytest.raises(OSError, match=r"hf:/path/to/model"):
        load_causal_lm(str(tmp_path / "no-such-model"))
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'ctta\[diffusion\]'"):
        load_causal_lm("gpt2")


# ----------------------------------------------------------------------------------------------------------- openai
class _Stub(http.server.BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Stub.seen.append((self.path, self.headers.get("Authorization"), body))
        answer = {"choices": [{"message": {"content": f"prompt {i} of {body['model']}"}} for i in range(body["n"])]}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub_server():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Stub.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_openai_backend_sends_the_key_as_a_header_and_never_writes_it(tmp_path, stub_server, monkeypatch):
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("MY_LLM_KEY", secret)
    log = tmp_path / "openai.jsonl"
    llm = make_llm("openai:gpt-3.5-turbo", log, base_url=stub_server, api_key_env="MY_LLM_KEY")
    assert llm.generate(ASK, n=2, temperature=1.0) == ["prompt 0 of gpt-3.5-turbo", "prompt 1 of gpt-3.5-turbo"]
    path, auth, body = _Stub.seen[0]
    assert path == "/v1/chat/completions" and auth == f"Bearer {secret}"
    assert body["messages"] == ASK and body["n"] == 2 and body["temperature"] == 1.0 and "top_k" not in body
    assert secret not in log.read_text() and secret not in repr(vars(llm.backend))
    assert make_llm("replay", log).generate(ASK, n=2) == ["prompt 0 of gpt-3.5-turbo", "prompt 1 of gpt-3.5-turbo"]
    again = make_llm("openai:gpt-3.5-turbo", log, base_url=stub_server, api_key_env="MY_LLM_KEY")
    assert again.generate(ASK, n=2)[1] == "prompt 1 of gpt-3.5-turbo" and again.calls == 0
    assert len(_Stub.seen) == 1  # a live backend with a complete log sends nothing


def test_openai_backend_network_error_is_one_clear_message(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value")
    llm = make_llm("openai:gpt-3.5-turbo", None, base_url="http://127.0.0.1:9/v1", timeout=2)
    with pytest.raises(RuntimeError, match=r"cannot reach http://127.0.0.1:9/v1/chat/completions") as err:
        llm.generate(ASK)
    assert "sk-secret-value" not in str(err.value) and err.value.__cause__ is None


# ---------------------------------------------------------------------------------------------------------- scoring
def test_unigram_prior_closed_forms():
    from ctta.backbones.clip import create_clip

    _, _, clip_tokenizer = create_clip("ctta-tiny-clip", "")
    uniform = UnigramPrior.from_tokenizer(clip_tokenizer)
    n_tokens = len(clip_tokenizer.encode("a photo of a cat."))
    assert uniform.vocab_size == 49408
    assert uniform.log_prob("a photo of a cat.") == pytest.approx(-n_tokens * math.log(49408), rel=1e-12)
    counts = UnigramPrior(lambda s: [int(c) for c in s], vocab_size=4, counts={0: 3, 1: 1}, smoothing=1.0)
    # p(0) = 4/8, p(1) = 2/8, p(2) = p(3) = 1/8
    assert counts.log_prob("0123") == pytest.approx(math.log(4 / 8 * 2 / 8 * 1 / 8 * 1 / 8), rel=1e-12)
    bounded = UnigramPrior(lambda s: [int(c) for c in s], vocab_size=4, max_length=3)  # lengths 0..3 uniform
    assert bounded.log_prob("01") == pytest.approx(-math.log(4) - 2 * math.log(4), rel=1e-12)
    assert bounded.log_prob("0123") == -math.inf
    total = sum(math.exp(bounded.log_prob("".join(map(str, s)))) for k in range(4) for s in _sequences(4, k))
    assert total == pytest.approx(1.0, rel=1e-12)  # one distribution over every sequence up to 3 tokens
    corpus = UnigramPrior.from_corpus(clip_tokenizer, ["a photo", "a cat"], smoothing=0.5)
    a_id = tokenize_fn(clip_tokenizer)("a")[0]
    assert corpus.token_log_prob(a_id) == pytest.approx(math.log(2.5 / (4 + 0.5 * 49408)), rel=1e-12)


def _sequences(vocab: int, length: int) -> list[tuple[int, ...]]:
    return list(itertools.product(range(vocab), repeat=length))


def test_causal_lm_scorer_is_the_chain_rule_product():
    pytest.importorskip("transformers")
    model, tokenizer = _tiny_hf()
    scorer = CausalLMScorer(model, tokenizer, add_eos=True)
    ids = [0] + tokenizer.encode("a photo of the cat", add_special_tokens=False) + [0]
    expected = 0.0
    with torch.no_grad():
        for t in range(1, len(ids)):  # one forward per prefix
            logits = model(input_ids=torch.tensor([ids[:t]])).logits[0, -1]
            expected += float(torch.log_softmax(logits.double(), -1)[ids[t]])
    assert scorer.log_prob("a photo of the cat") == pytest.approx(expected, abs=1e-4)
    assert CausalLMScorer(model, tokenizer).log_prob("") == 0.0
