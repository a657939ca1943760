"""VPTSP-G's prompt memory bank (strategies/vptspg/bank.py): class prompts and their optimizer state swapped
between a CPU store and a resident batch buffer train exactly as resident class prompts do, step by step (SGD with
momentum and weight decay, AdamW), absent classes included; the ``memory_bank`` switch and its ``auto`` threshold."""

from __future__ import annotations

import pytest
import torch
from ctta.strategies.vptspg import VPTSPGModel, proxy_anchor_loss
from ctta.strategies.vptspg.strategy import BANK_AUTO_CLASSES, VPTSPGConfig, use_bank

from tests._conformance_cases import tiny_vit

K = 2
BATCHES = [(0, 1), (2, 3), (4, 0), (1, 2), (3, 4), (0, 2), (1, 4)]  # classes come back after gaps of 1-3 steps


def _model(bank_rows):
    torch.manual_seed(0)
    vit = tiny_vit()
    torch.manual_seed(1)
    return VPTSPGModel(vit, 5, embed_dim=8, n_prompts=1, n_class_prompts=2, k=K, bank_rows=bank_rows)


def _optimizer(model, kind):
    proxy = model.proxy_bias
    net = [p for p in model.parameters() if p.requires_grad and p is not proxy]
    groups = [{"params": net, "lr": 0.05}, {"params": [proxy], "lr": 0.1}]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=0.05, momentum=0.9, weight_decay=0.01)
    return torch.optim.AdamW(groups, lr=0.05, weight_decay=0.01)


def _step(model, opt, x, labels):
    if model.bank is not None:
        model.bank.withdraw(model.class_prompt_buffer, opt, torch.tensor(labels[::K]))
    opt.zero_grad()
    y = torch.tensor(labels)
    proxies = model.semantic_proxies(x, y)
    proxy_anchor_loss(model(x), y, proxies, alpha=8.0).backward()
    opt.step()
    if model.bank is not None:
        model.bank.deposit(model.class_prompt_buffer, opt)


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_swapped_training_equals_resident_training_step_by_step(kind):
    resident, banked = _model(None), _model(2)
    torch.testing.assert_close(banked.bank.values, resident.class_prompts.detach(), rtol=0, atol=0)
    opt_r, opt_b = _optimizer(resident, kind), _optimizer(banked, kind)
    g = torch.Generator().manual_seed(2)
    state_key = "momentum_buffer" if kind == "sgd" else "exp_avg"
    absent_moved = 0
    for step, classes in enumerate(BATCHES):
        for o in (opt_r, opt_b):  # a schedule: every step another learning rate
            o.param_groups[0]["lr"] = 0.05 / (1 + step)
        x, labels = torch.randn(4, 3, 32, 32, generator=g), [c for c in classes for _ in range(K)]
        before = resident.class_prompts.detach().clone()
        _step(resident, opt_r, x, labels)
        _step(banked, opt_b, x, labels)
        values, state = banked.bank.resident(banked.class_prompt_buffer, opt_b)
        torch.testing.assert_close(values, resident.class_prompts.detach(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(state[state_key], opt_r.state[resident.class_prompts][state_key],
                                   rtol=1e-6, atol=1e-7)  # fmt: skip
        torch.testing.assert_close(banked.memory, resident.memory, rtol=1e-6, atol=1e-7)
        shared = [n for n, _ in resident.named_parameters() if n != "class_prompts"]
        for n in shared:  # everything else trains identically too
            torch.testing.assert_close(dict(banked.named_parameters())[n], dict(resident.named_parameters())[n])
        absent = [c for c in range(5) if c not in classes]
        absent_moved += not torch.equal(resident.class_prompts[:, absent].detach(), before[:, absent])
    assert absent_moved >= len(BATCHES) - 1  # resident absent rows do move (momentum, weight decay): caught up


def test_a_returning_class_is_brought_through_the_steps_it_missed():
    """The store keeps a class as it was last deposited; withdrawing it applies the missed zero-gradient steps."""
    banked = _model(2)
    opt = _optimizer(banked, "sgd")
    g = torch.Generator().manual_seed(3)
    for classes in BATCHES[:3]:
        _step(banked, opt, torch.randn(4, 3, 32, 32, generator=g), [c for c in classes for _ in range(K)])
    bank = banked.bank
    assert bank.steps == 3 and bank.seen.tolist() == [3, 1, 2, 2, 3]
    stored = bank.values[:, 1].clone()  # class 1: last in step 1
    buf = bank.state["momentum_buffer"][:, 1].clone()
    want = stored.clone()
    for hp in bank.hparams[1:]:  # steps 2 and 3 with a zero gradient: d = wd p; buf = m buf + d; p -= lr buf
        buf = 0.9 * buf + hp["weight_decay"] * want
        want = want - hp["lr"] * buf
    bank.withdraw(banked.class_prompt_buffer, opt, torch.tensor([1, 3]))
    torch.testing.assert_close(banked.class_prompt_buffer[:, 0].detach(), want)
    torch.testing.assert_close(opt.state[banked.class_prompt_buffer]["momentum_buffer"][:, 0], buf)
    assert not torch.equal(want, stored)


def test_the_bank_keeps_class_prompts_off_the_model_parameters():
    banked = _model(2)
    names = {n for n, _ in banked.named_parameters()}
    assert "class_prompt_buffer" in names and "class_prompts" not in names
    assert banked.class_prompt_buffer.shape == (banked.bank.values.shape[0], 2, *banked.bank.values.shape[2:])
    assert banked.bank.values.device.type == "cpu"
    with pytest.raises(RuntimeError, match="withdraw"):
        banked.semantic_proxies(torch.randn(4, 3, 32, 32), torch.tensor([0, 0, 1, 1]))
    opt = torch.optim.Adam(banked.parameters())
    with pytest.raises(ValueError, match="SGD or AdamW"):
        banked.bank.withdraw(banked.class_prompt_buffer, opt, torch.tensor([0, 1]))


def test_memory_bank_switch_and_auto_threshold():
    assert BANK_AUTO_CLASSES == 1000
    assert not use_bank("auto", 100) and not use_bank("auto", 999) and use_bank("auto", 1000)
    assert use_bank("auto", 11318) and use_bank(True, 5) and not use_bank(False, 20000)
    assert VPTSPGConfig().memory_bank == "auto"
    with pytest.raises(ValueError, match="memory_bank"):
        VPTSPGConfig(memory_bank="yes")


def test_the_bank_travels_in_the_state_dict():
    banked = _model(2)
    opt = _optimizer(banked, "sgd")
    _step(banked, opt, torch.randn(4, 3, 32, 32), [0, 0, 3, 3])
    state = banked.state_dict()
    assert "bank_store._extra_state" in state and "class_prompts" not in state
    fresh = _model(2)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.bank.values, banked.bank.values, rtol=0, atol=0)
    torch.testing.assert_close(fresh.bank.state["momentum_buffer"], banked.bank.state["momentum_buffer"])
    assert fresh.bank.seen.tolist() == [1, 0, 0, 1, 0] and fresh.bank.hparams == banked.bank.hparams
    assert "bank_store._extra_state" not in _model(None).state_dict()  # resident models' state_dict unchanged


def _train_strategy(memory_bank):
    """The vptspg strategy trained one epoch on digits 0-4 (batches of 2 classes x 2) with the bank on or off."""
    import warnings

    from avalanche.training.plugins import EvaluationPlugin
    from ctta.scenarios.retrieval import retrieval_benchmark
    from ctta.strategies.vptspg import VPTSPG

    from ctta.data.digits import TensorImageDataset, load_digits

    train, _ = load_digits(img_size=32)
    bench = retrieval_benchmark(TensorImageDataset(train.images[:80], train.targets[:80], train.classes))
    torch.manual_seed(0)
    cfg = VPTSPGConfig(embed_dim=8, n_prompts=1, n_class_prompts=1, epochs=1, batch_size=4, memory_bank=memory_bank)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        strategy = VPTSPG.from_config(cfg, backbone=tiny_vit(), benchmark=bench, device="cpu",
                                      evaluator=EvaluationPlugin(loggers=[]))  # fmt: skip
    strategy.train(bench.train_stream[0])
    return strategy


def test_the_strategy_swaps_around_each_update_and_trains_as_resident():
    resident, banked = _train_strategy(False), _train_strategy(True)
    assert resident.model.bank is None and banked.model.bank is not None
    assert banked.model.bank.steps == 80 // 2 // 4  # one deposit per update (40 training images, batches of 4)
    values, _ = banked.model.bank.resident(banked.model.class_prompt_buffer, banked.optimizer)
    torch.testing.assert_close(values, resident.model.class_prompts.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(banked.model.proxy_bias, resident.model.proxy_bias, rtol=1e-5, atol=1e-6)
