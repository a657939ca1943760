"""The zero-shot template and the text-embedding cache (issue 23): the text classifier equals a straightforward
re-computation, the cache answers without encoding and never serves another model's rows, the class-incremental
head covers the classes seen so far, and nothing trains."""

from __future__ import annotations

import copy

import pytest
import torch

from ctta.clip_prompting.template import MASKED_LOGIT
from ctta.clip_prompting.text_cache import TextEmbeddingCache, class_embeddings, encode_texts, text_fingerprint
from ctta.clip_prompting.vision import encode_image
from ctta.clip_prompting.zero_shot import TextHeadModel, ZeroShotTemplate, single_template
from tests import _conformance_cases as cc

PER_CLASS = [["a photo of a zero.", "a zero."], ["a one.", "the digit one.", "a photo of a one."], ["a two."]]


@pytest.fixture(scope="module")
def clip():
    return cc.tiny_clip()


def _reference(model, tok, per_class) -> torch.Tensor:
    """Loop over classes: encode, normalise each row, mean, re-normalise."""
    rows = []
    with torch.no_grad():
        for texts in per_class:
            e = model.encode_text(tok(texts)).float()
            e = e / e.norm(dim=-1, keepdim=True)
            m = e.mean(0)
            rows.append(m / m.norm())
    return torch.stack(rows)


class Counting:
    """Wraps ``clip.encode_text`` to count the texts it encodes."""

    def __init__(self, model):
        self.model, self.texts, self.inner = model, 0, model.encode_text

    def __enter__(self):
        def encode_text(tokens, *a, **k):
            self.texts += tokens.shape[0]
            return self.inner(tokens, *a, **k)

        self.model.encode_text = encode_text
        return self

    def __exit__(self, *exc):
        del self.model.encode_text


def test_class_embeddings_equal_a_straightforward_recomputation(clip):
    model, tok = clip
    ref = _reference(model, tok, PER_CLASS)
    assert torch.allclose(class_embeddings(model, tok, PER_CLASS), ref, atol=1e-6)
    assert torch.allclose(class_embeddings(model, tok, PER_CLASS, TextEmbeddingCache(None)), ref, atol=1e-6)
    unnormalised = class_embeddings(model, tok, PER_CLASS, renormalize=False)
    assert torch.allclose(unnormalised / unnormalised.norm(dim=-1, keepdim=True), ref, atol=1e-6)
    assert (unnormalised.norm(dim=-1)[1] < 1).item()  # the mean of unit rows is shorter
    with pytest.raises(ValueError, match=r"classes \[1\] have no texts"):
        class_embeddings(model, tok, [["a"], []])


def test_text_head_logits_are_scaled_cosines(clip):
    model, tok = clip
    head = TextHeadModel(model, tok, ["zero", "one", "two"], single_template("a photo of a {}."))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        f = encode_image(model, x).float()
    f = f / f.norm(dim=-1, keepdim=True)
    g = _reference(model, tok, [["a photo of a zero."], ["a photo of a one."], ["a photo of a two."]])
    expected = model.logit_scale.exp().float() * f @ g.t()
    assert torch.allclose(head(x), expected, atol=1e-5)
    assert not [p for p in head.parameters() if p.requires_grad]
    head.set_texts_for(lambda names: [[f"the {c}."] for c in names])
    assert torch.allclose(head.text_features(), _reference(model, tok, [["the zero."], ["the one."], ["the two."]]),
                          atol=1e-6)  # fmt: skip


def test_cache_hit_is_identical_and_encodes_nothing_memory_and_disk(clip, tmp_path):
    model, tok = clip
    texts = ["a zero.", "a one.", "a zero.", "a two."]
    cache = TextEmbeddingCache(tmp_path)
    with Counting(model) as count:
        first = encode_texts(model, tok, texts, cache)
        assert count.texts == 3 and cache.encoded == 3  # the repeated text once
        again = encode_texts(model, tok, texts, cache)
        assert count.texts == 3 and cache.hits == 4
        fresh = TextEmbeddingCache(tmp_path)  # a new run reading the folder
        from_disk = encode_texts(model, tok, list(reversed(texts)), fresh)
        assert count.texts == 3 and fresh.encoded == 0
    assert torch.equal(first, again) and torch.equal(from_disk, first.flip(0))
    assert torch.allclose(first, encode_texts(model, tok, texts), atol=1e-6)
    assert not list(tmp_path.rglob("*.tmp")), "a temporary file was left behind"
    assert len(list(tmp_path.rglob("*.pt"))) == 1


def test_fingerprint_follows_the_text_tower_only(clip, tmp_path):
    model, tok = clip
    model = copy.deepcopy(model)
    fp = text_fingerprint(model, tok)
    assert text_fingerprint(copy.deepcopy(model), tok) == fp  # same weights, another object
    with torch.no_grad():
        model.visual.conv1.weight.add_(1.0)
    assert text_fingerprint(model, tok) == fp  # the image tower is not part of it
    cache = TextEmbeddingCache(tmp_path)
    before = encode_texts(model, tok, ["a zero."], cache)
    with torch.no_grad():
        model.token_embedding.weight.mul_(2.0)  # in place: the version counter changes
    assert text_fingerprint(model, tok) != fp
    with Counting(model) as count:
        after = encode_texts(model, tok, ["a zero."], TextEmbeddingCache(tmp_path))
        assert count.texts == 1  # a changed model never reads the old rows
    assert not torch.equal(before, after)


def _strategy(clip, **kwargs):
    model, tok = clip
    return ZeroShotTemplate(model=copy.deepcopy(model), tokenizer=tok, classnames=cc.classnames(), device="cpu",
                            train_mb_size=32, eval_mb_size=64, evaluator=None, **kwargs)  # fmt: skip


def test_class_incremental_head_is_the_classes_seen_so_far(clip):
    strategy = _strategy(clip)
    full = TextHeadModel(strategy.model.clip, strategy.model.tokenizer, cc.classnames(), single_template())
    bench = cc.class_incremental(*cc.digits(40, 40))
    first = next(iter(bench.train_stream))
    strategy.train(first)
    assert strategy.seen == list(cc.HALVES[0]) and strategy.model.classnames == cc.classnames()[:5]
    strategy.experience, strategy.mbatch = first, [torch.randn(3, 3, 32, 32), torch.zeros(3, dtype=torch.long)]
    strategy.model.eval()
    out = strategy.forward_eval()
    assert out.shape == (3, 10) and (out[:, 5:] == MASKED_LOGIT).all()
    assert torch.allclose(out[:, :5], full(strategy.mb_x)[:, :5], atol=1e-5)


def test_nothing_trains_and_an_optimizer_is_refused(clip):
    model, tok = clip
    with pytest.raises(ValueError, match="no trainable parameter"):
        _strategy(clip, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    strategy = _strategy(clip)
    assert strategy.zero_shot and strategy.training_free and not strategy.records_epochs
    assert not [p for p in strategy.model.parameters() if p.requires_grad]
