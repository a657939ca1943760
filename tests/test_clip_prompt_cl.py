"""The CLIP prompt learners over a class-incremental stream (text head = classes seen so far) and TPT started
from a saved text context."""

from __future__ import annotations

import pytest
import torch
from avalanche.training.plugins import EvaluationPlugin
from ctta.strategies.coop import CoOpConfig, CoOpModel
from ctta.strategies.maple import MaPLeConfig, MaPLeModel
from ctta.strategies.pre import PREConfig, PREModel

from ctta.clip_prompting.episode_tuner import PromptTuner, PromptTuningConfig
from ctta.clip_prompting.model import save_text_context
from ctta.clip_prompting.template import MASKED_LOGIT
from ctta.data.digits import DIGIT_NAMES
from ctta.registry import STRATEGIES
from tests import _conformance_cases as cc


class _Logits:
    """Plugin keeping the last eval logits."""

    def __init__(self):
        self.outputs = []

    def __getattr__(self, name):
        if name.startswith("before_") or name.startswith("after_"):
            return lambda strategy, **kw: None
        raise AttributeError(name)

    def after_eval_iteration(self, strategy, **kw):
        self.outputs.append(strategy.mb_output.detach().clone())


@pytest.mark.parametrize("name", ["coop", "maple", "promptsrc"])
def test_class_incremental_head_covers_seen_classes(tiny, name):
    model, tok = tiny
    train, test = cc.digits(40, 40)
    bench = cc.class_incremental(train, test)
    kwargs = {"maple": dict(depth=2), "promptsrc": dict(depth_text=2, depth_vision=2, teacher_templates="hand")}
    keep = _Logits()
    strategy = STRATEGIES.get(name).builder(
        model=model, tokenizer=tok, classnames=list(DIGIT_NAMES), epochs=1, batch_size=8, prec="fp32",
        evaluator=EvaluationPlugin(loggers=[]), plugins=[keep], **kwargs.get(name, {}),
    )  # fmt: skip
    strategy.train(bench.train_stream[0])
    assert strategy.model.text.n_classes == 5 and strategy.seen == [0, 1, 2, 3, 4]
    strategy.eval(bench.test_stream[1])
    out = torch.cat(keep.outputs)
    assert out.shape[1] == 10 and (out[:, 5:] == MASKED_LOGIT).all() and (out[:, :5] > MASKED_LOGIT).all()
    strategy.train(bench.train_stream[1])
    assert strategy.model.text.n_classes == 10 and strategy.seen == list(range(10))


def test_tpt_starts_from_a_saved_context(tiny, tmp_path):
    model, tok = tiny
    names = ["cat", "dog", "bird"]
    coop = CoOpModel(model, tok, names, CoOpConfig())
    with torch.no_grad():
        coop.ctx.add_(0.05)
    path = save_text_context(coop, tmp_path / "coop.pth")
    tuner = PromptTuner(model, tok, names, PromptTuningConfig(init=f"coop:{path}"))
    torch.testing.assert_close(tuner.model.text.ctx, coop.ctx.detach())
    with torch.no_grad():
        torch.testing.assert_close(tuner.model.text(), coop.text_features(), atol=1e-5, rtol=1e-5)
    pre = PREModel(model, tok, names, PREConfig())
    with torch.no_grad():
        torch.testing.assert_close(pre.text_context(), pre.encoder(pre.ctx))
    with pytest.raises(TypeError, match="TPT"):
        save_text_context(MaPLeModel(model, tok, names, MaPLeConfig(depth=2)), tmp_path / "maple.pth")


def test_context_out_writes_after_training(tiny, tmp_path):
    model, tok = tiny
    train, test = cc.digits(20, 20)
    bench = cc.class_incremental(train, test)
    out = tmp_path / "ctx.pth"
    strategy = STRATEGIES.get("coop").builder(
        model=model, tokenizer=tok, classnames=list(DIGIT_NAMES), epochs=1, batch_size=8, prec="fp32",
        context_out=str(out), evaluator=EvaluationPlugin(loggers=[]),
    )  # fmt: skip
    strategy.train(bench.train_stream[0])
    saved = torch.load(out, weights_only=True)["state_dict"]["ctx"]
    torch.testing.assert_close(saved, strategy.model.ctx.detach())


def test_runner_class_incremental_run(tmp_path):
    """``ctta run`` of a prompt learner on a class-incremental benchmark: top-1 over the stream, no base/new keys."""
    from ctta.runner.config import load_config
    from ctta.runner.run import run

    cfg = load_config(
        {
            "seed": 1,
            "device": "cpu",
            "scenario": {"name": "class_incremental", "dataset": "digits", "n_experiences": 2, "img_size": 32},
            "backbone": {"name": "clip", "model": "ctta-tiny-clip", "pretrained": ""},
            "strategy": {"name": "coop", "epochs": 1, "batch_size": 32, "lr": 0.01},
            "log": {"out_dir": str(tmp_path), "plot": False, "progress": False},
        }
    )
    summary = run(cfg, verbose=False)["summary"]
    assert "top1" in summary and not {"base_acc", "new_acc", "hm"} & set(summary)
