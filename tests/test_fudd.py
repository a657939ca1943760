"""FuDD (issue 23, C2) on hand-made text and image features: the ambiguous sets, the stage-2 texts of each candidate
and the logits in closed form; ``k: all`` (the official "gpt" classifier); the class-incremental head caps k."""

from __future__ import annotations

import copy

import pytest
import torch
from ctta.strategies.fudd import FAR_LOGIT, FuDD, FuDDConfig, FuDDModel, candidate_texts, dedup_capitalize

from ctta.clip_prompting.descriptions import PairwiseBank
from ctta.clip_prompting.template import MASKED_LOGIT
from tests import _conformance_cases as cc

BANK = PairwiseBank(["ant", "bee", "wild_cat"], {
    "0_1": ((0, 1), [("a0", "b0"), ("a1", "b1")]),
    "1_2": ((2, 1), [("c2", "b2")]),  # listed as classes [2, 1]; no pair 0_2
})  # fmt: skip
S1 = ["A photo of a ant.", "A photo of a bee.", "A photo of a wild cat."]  # stage 1, capitalised
TEXTS = [*S1, "A0", "A1", "B0", "B1", "B2", "C2"]


class FakeCLIP(torch.nn.Module):
    """Text tower = a table of hand-made embeddings (one row per text); logit scale 2."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        table = torch.randn(len(TEXTS), 4, generator=g)
        table[:3] = torch.eye(4)[:3]  # stage-1 texts: e0, e1, e2
        self.table = torch.nn.Parameter(table)
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0).log())

    def encode_text(self, ids):
        return self.table[ids]


def tokenizer(texts):
    return torch.tensor([TEXTS.index(t) for t in texts])


class HandModel(FuDDModel):
    def image_features(self, x):  # the "images" are the features
        return x / x.norm(dim=-1, keepdim=True)


def n(v):
    return v / v.norm(dim=-1, keepdim=True)


def emb(clip, texts):
    """Closed form: the normalised mean of the normalised rows."""
    return n(torch.stack([n(clip.table[TEXTS.index(t)]) for t in texts]).detach().mean(0))


F = n(torch.tensor([[0.5, 0.8, 0.1, 0.3]]))  # stage-1 ranking: bee, ant, wild cat


def test_dedup_keeps_the_first_occurrence_then_capitalises():
    assert dedup_capitalize(["x b", "Y", "x b", "X B"]) == ["X b", "Y", "X b"]  # case variants stay two rows


def test_ambiguous_set_texts_over_candidate_pairs():
    assert candidate_texts(BANK, [1, 0]) == [["B0", "B1"], ["A0", "A1"]]
    assert candidate_texts(BANK, [1, 0, 2]) == [
        ["B0", "B1", "B2"], ["A0", "A1", "A photo of a ant."], ["C2", "A photo of a wild cat."]]  # fmt: skip


@pytest.mark.parametrize("k", [2, 3])
def test_second_stage_logits_in_closed_form(k):
    clip = FakeCLIP()
    model = HandModel(clip, tokenizer, ["ant", "bee", "wild_cat"], BANK, k)
    out = model(F.clone())
    first = F[0] @ torch.eye(4)[:3].t()  # stage-1 cosines
    sets = {2: {1: ["B0", "B1"], 0: ["A0", "A1"]},
            3: {1: ["B0", "B1", "B2"], 0: ["A0", "A1", S1[0]], 2: ["C2", S1[2]]}}[k]  # fmt: skip
    expected = FAR_LOGIT + 2.0 * first
    for c, texts in sets.items():
        expected[c] = 2.0 * F[0] @ emb(clip, texts)
    assert torch.allclose(out[0], expected, atol=1e-5)
    assert out.argmax(1).item() == expected.argmax().item()


def test_k_all_is_the_pooled_classifier_and_k_one_the_first_stage():
    clip = FakeCLIP()
    out = HandModel(clip, tokenizer, ["ant", "bee", "wild_cat"], BANK, "all")(F.clone())
    pooled = torch.stack([emb(clip, t) for t in (["A0", "A1"], ["B0", "B1", "B2"], ["C2"])])
    assert torch.allclose(out[0], 2.0 * F[0] @ pooled.t(), atol=1e-5)
    one = HandModel(clip, tokenizer, ["ant", "bee", "wild_cat"], BANK, 1)(F.clone())
    first = 2.0 * F[0] @ torch.eye(4)[:3].t()
    assert torch.allclose(one[0], torch.stack([FAR_LOGIT + first[0], first[1], FAR_LOGIT + first[2]]), atol=1e-5)
    with pytest.raises(ValueError, match="k=0"):
        FuDDConfig(k=0)


def test_class_incremental_head_caps_k_at_the_seen_classes():
    model, tok = cc.tiny_clip()
    strategy = FuDD(model=copy.deepcopy(model), tokenizer=tok, classnames=cc.classnames(), device="cpu", k=10,
                    evaluator=None, train_mb_size=32, eval_mb_size=64)  # fmt: skip
    bench = cc.class_incremental(*cc.digits(40, 40))
    first = next(iter(bench.train_stream))
    strategy.train(first)
    strategy.experience, strategy.mbatch = first, [torch.randn(3, 3, 32, 32), torch.zeros(3, dtype=torch.long)]
    strategy.model.eval()
    out = strategy.forward_eval()
    assert out.shape == (3, 10) and (out[:, 5:] == MASKED_LOGIT).all()
    assert (out[:, :5] > FAR_LOGIT / 2).all()  # k = 10 capped at the 5 seen classes: all are candidates
    assert all(len(key) == 5 for key in strategy.model.sets)


def _test_time_summary(tmp_path, n_views: int) -> dict:
    from ctta.runner.config import load_config
    from ctta.runner.run import run

    cfg = tmp_path / f"v{n_views}.yaml"
    cfg.write_text("seed: 1\ndevice: cpu\n"
                   f"scenario: {{name: test_time, dataset: digits, n_views: {n_views}, resolution: 32, "
                   "max_samples: 20}\n"
                   "backbone: {name: clip, model: ctta-tiny-clip-digits, pretrained: ctta}\n"
                   "strategy: {name: fudd, k: 3, eval_batch_size: 8}\n"
                   f"log: {{out_dir: {tmp_path / f'out{n_views}'}, plot: false}}\n")  # fmt: skip
    return run(load_config(cfg), verbose=False)["summary"]


def test_test_time_run_classifies_the_centre_crop_of_the_views(tmp_path):
    """A test-time benchmark runs without a train stream; with several views only ``views[0]`` (the centre crop, the
    same image as a one-view run) is classified."""
    one, four = _test_time_summary(tmp_path, 1), _test_time_summary(tmp_path, 4)
    assert one == four and 0.0 <= one["top1"] <= one["top5"] <= 1.0
