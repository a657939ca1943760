"""DAM-VP: pad prompts, clustering/routing, read-out, schedule, optimiser modes, Reptile, the strategy."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from ctta.scenarios.transfer import TransferConfig, build_transfer
from ctta.strategies.damvp import DAMVP, DAMVPConfig, warmup_cosine_lr
from ctta.strategies.damvp.clustering import cluster_features, default_tau, route
from ctta.strategies.damvp.model import Featurizer, load_representation, noise_readout_order, readout_indices
from ctta.strategies.damvp.pixel import PadPromptBank, PadPrompter, load_prompter, pad_prompt_numel, save_prompter
from ctta.strategies.damvp.reptile import MetaTask, ReptileMetaTrainer, meta_inner_lr, reptile_update

from ctta.evaluation import make_evaluator

TINY = dict(tau=0.7, lr=1000.0, epochs=1, batch_size=16, eval_batch_size=64, pad_width=4, n_noise=32)


@pytest.fixture(scope="module")
def bench():
    return build_transfer(TransferConfig(datasets=("digits/0/2", "digits/1/2"), img_size=32, max_per_split=48))


def _strategy(backbone, bench, **over) -> DAMVP:
    cfg = DAMVPConfig(**{**TINY, **over})
    return DAMVP.from_config(cfg, backbone=backbone, benchmark=bench, device="cpu", evaluator=make_evaluator())


def _params(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


# ------------------------------------------------------------------ pad prompt
def test_pad_prompter_has_69840_parameters_and_a_zero_interior():
    p = PadPrompter(224, 30)
    assert sum(t.numel() for t in p.parameters()) == 69_840 == pad_prompt_numel(224, 30)
    x = torch.randn(2, 3, 224, 224)
    delta = p(x) - x
    assert torch.equal(delta[:, :, 30:194, 30:194], torch.zeros(2, 3, 164, 164))
    assert torch.allclose(delta, p.frame().expand(2, -1, -1, -1), atol=1e-6)
    assert torch.allclose(delta[0, :, :30], p.pad_up[0], atol=1e-6)  # top band = pad_up


def test_bank_vectorised_equals_per_sample_loop_and_only_routed_prompts_get_gradient():
    torch.manual_seed(0)
    bank = PadPromptBank(4, image_size=32, pad_width=4)
    for p in bank.prompters:  # make the prompts differ
        torch.nn.init.normal_(p.pad_left)
    x, idx = torch.randn(6, 3, 32, 32), torch.tensor([2, 0, 2, 2, 0, 0])
    fast, loop = bank(x, idx), bank.forward_loop(x, idx)
    assert torch.equal(fast, loop)
    fast.square().sum().backward()
    got_grad = [all(t.grad is not None for t in p.parameters()) for p in bank.prompters]
    assert got_grad == [True, False, True, False]
    with pytest.raises(IndexError, match="out of range"):
        bank(x, torch.tensor([0, 1, 2, 3, 4, 0]))


def test_prompter_checkpoint_round_trip(tmp_path):
    p = PadPrompter(32, 4, generator=torch.Generator().manual_seed(3))
    save_prompter(p, tmp_path / "meta.pth", epoch=1)
    q = load_prompter(tmp_path / "meta.pth")
    assert (q.image_size, q.pad_width) == (32, 4) and all(
        torch.equal(a, b) for a, b in zip(p.parameters(), q.parameters())
    )
    with pytest.raises(FileNotFoundError):
        load_prompter(tmp_path / "missing.pth")


# ------------------------------------------------------------------ clustering and routing
def test_more_diverse_data_gives_more_clusters_at_a_fixed_threshold():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(12, 16, generator=g) * 10
    narrow = centres[:2].repeat_interleave(50, 0) + 0.1 * torch.randn(100, 16, generator=g)
    diverse = centres.repeat_interleave(9, 0)[:100] + 0.1 * torch.randn(100, 16, generator=g)
    k_narrow, k_diverse = cluster_features(narrow, 5.0).n_clusters, cluster_features(diverse, 5.0).n_clusters
    assert k_narrow == 2 and k_diverse == 12


def test_clustering_tiny_vit_with_explicit_tau_gives_several_clusters_whose_prototypes_are_means(tiny_vit, digits):
    x = torch.stack([digits[0][i][0] for i in range(96)])
    with torch.no_grad():
        feats = tiny_vit.forward_features(x)[:, 0]
    clus = cluster_features(feats, 0.7)
    assert 1 < clus.n_clusters < len(feats)
    for k in range(clus.n_clusters):
        assert torch.allclose(clus.prototypes[k], feats[clus.labels == k].mean(0), atol=1e-6)


def test_routing_picks_the_nearest_prototype():
    g = torch.Generator().manual_seed(1)
    feats, protos = torch.randn(50, 8, generator=g), torch.randn(5, 8, generator=g)
    assert torch.equal(route(feats, protos), torch.cdist(feats, protos).argmin(-1))
    assert route(protos[[3, 1]] + 1e-4, protos).tolist() == [3, 1]  # a point on a prototype: distance 0, no NaN


def test_bad_thresholds_and_empty_data_raise_clear_errors():
    pts = torch.arange(10.0).unsqueeze(1) * 10
    with pytest.raises(ValueError, match="own cluster"):
        cluster_features(pts, 1.0)
    with pytest.raises(ValueError, match="empty"):
        cluster_features(torch.zeros(0, 4), 1.0)
    with pytest.raises(ValueError, match="positive"):
        cluster_features(pts, 0.0)
    with pytest.raises(KeyError, match="tau"):
        default_tau("vit-s-1k")
    assert default_tau("vit-b-1k") == 31 and default_tau("clip-vit-b", "cifar100") == 16


# ------------------------------------------------------------------ read-out, schedule, optimiser modes
def test_readout_is_top_c_population_std_over_seeded_noise_in_ascending_order(tiny_vit):
    phi = lambda x: tiny_vit.forward_features(x)[:, 0]  # noqa: E731
    order = noise_readout_order(phi, 32, seed=2023, n_noise=512, batch=512)
    torch.manual_seed(2023)
    with torch.no_grad():
        std = phi(torch.randn(512, 3, 32, 32)).std(0, unbiased=False)
    top = set(std.sort(descending=True).indices[:10].tolist())
    idx = readout_indices(order, 10)
    assert set(idx.tolist()) == top and idx.tolist() == sorted(idx.tolist())
    with pytest.raises(ValueError, match="feature dim"):
        readout_indices(order, 49)


def test_warmup_cosine_schedule_matches_the_formula():
    base, w, s = 2.0, 8, 40
    assert warmup_cosine_lr(0, base, w, s) == pytest.approx(base / w)
    assert warmup_cosine_lr(w - 1, base, w, s) == pytest.approx(base)
    assert warmup_cosine_lr(w, base, w, s) == pytest.approx(base)
    assert warmup_cosine_lr(s - 1, base, w, s) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * (s - 1 - w) / (s - w))) * base
    )


@pytest.mark.parametrize("mode", ["official", "fixed"])
def test_head_tuning_optimizer_modes(tiny_vit, bench, mode):
    s = _strategy(tiny_vit, bench, adapt_method="prompt_w_head", head_tuning_optimizer=mode, lr=3.0, weight_decay=1e-4)
    s.experience = bench.train_stream[0]
    s._before_training_exp()
    s._before_training_iteration()
    groups = s.optimizer.param_groups
    head = groups[-1]
    assert len(groups) == len(s.model.adapter(0).bank) + 1
    factor = warmup_cosine_lr(0, 1.0, s._warmup, s._total)
    if mode == "official":  # momentum 0 (misspelt key) and the head at the prompt lr
        assert all(g["momentum"] == 0 for g in groups) and head["lr"] == pytest.approx(3.0 * factor)
    else:
        assert all(g["momentum"] == 0.9 for g in groups) and head["lr"] == pytest.approx(0.1 * factor)
    assert groups[0]["lr"] == pytest.approx(3.0 * factor) and groups[0]["weight_decay"] == 1e-4
    assert head["weight_decay"] == 0.0


@pytest.mark.parametrize("legacy", [True, False])
def test_legacy_zero_grad_keeps_moving_prompts_that_a_batch_does_not_route_to(tiny_vit, bench, legacy):
    s = _strategy(tiny_vit, bench, legacy_zero_grad=legacy, lr=1.0)
    s.experience = bench.train_stream[0]
    s._before_training_exp()
    bank = s.model.adapter(0).bank
    groups = s.optimizer.param_groups
    assert len(groups) == len(bank) > 1 and all(g["momentum"] == 0.9 and g["weight_decay"] == 0 for g in groups)
    p0 = bank.prompters[0]
    for t in p0.parameters():
        t.grad = torch.ones_like(t)
    s.optimizer_step()  # prompt 0 was routed: momentum builds up
    s.optimizer.zero_grad()  # torch >= 2: grads become None
    before = _params(p0)
    s.optimizer_step()  # a batch that routes nothing to prompt 0
    moved = not all(torch.equal(a, b) for a, b in zip(before, p0.parameters()))
    assert moved == legacy  # torch 1.11 (reference) kept zero grads, so momentum still moved it


# ------------------------------------------------------------------ Reptile
def test_reptile_outer_update_is_theta_minus_eps_mean_difference():
    theta = PadPrompter(8, 2, generator=torch.Generator().manual_seed(0))
    fast = [PadPromptBank(2, 8, 2, init=theta), [copy.deepcopy(theta)]]
    with torch.no_grad():
        for i, p in enumerate([*fast[0].prompters, fast[1][0]]):
            for t in p.parameters():
                t.add_(float(i + 1))  # fast weights theta + 1, theta + 2, theta + 3
    before = _params(theta)
    reptile_update(theta, fast, 0.5)
    for b, a in zip(before, theta.parameters()):
        assert torch.allclose(a, b - 0.5 * (b - (b + 2.0)))  # mean fast = theta + 2
    assert meta_inner_lr(1, 4, 1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_meta_training_really_updates_and_initialises_new_prompts(tiny_vit, bench, tmp_path):
    s = _strategy(tiny_vit, bench, update_step=2, batch_size=16)
    theta0 = _params(s.model.meta_prompt)
    result = s.meta_train(list(bench.train_stream), epochs=1)
    assert len(result.history) == 3 and all(math.isfinite(h["loss"]) for h in result.history)
    assert not all(torch.equal(a, b) for a, b in zip(theta0, result.theta.parameters())), "theta did not move"
    assert all(torch.equal(a, b) for a, b in zip(s.model.meta_prompt.parameters(), result.best_train_loss.parameters()))
    assert not s.model.adapters  # source datasets leave no adapter behind
    save_prompter(s.model.meta_prompt, tmp_path / "theta.pth")
    s2 = _strategy(tiny_vit, bench, meta_prompt_path=str(tmp_path / "theta.pth"))
    s2.experience = bench.train_stream[0]
    ad = s2.build_adapter(0)
    for p in ad.bank.prompters:  # every cluster prompt starts as a copy of theta_meta
        assert all(torch.equal(a, b) for a, b in zip(p.parameters(), s.model.meta_prompt.parameters()))


def test_meta_trainer_head_tuning_variant_trains_the_task_head():
    torch.manual_seed(0)
    theta, head = PadPrompter(8, 2), torch.nn.Linear(3 * 64, 3)
    feats = lambda x: x.flatten(1)  # noqa: E731
    loader = [(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]))] * 2
    task = MetaTask("toy", loader, torch.randn(2, 192), feats, lambda x: head(x.flatten(1)), head)
    w0, t0 = head.weight.detach().clone(), _params(theta)
    ReptileMetaTrainer(theta, meta_lr=1.0, variant="ht", update_step=2).fit([task], epochs=1)
    assert not torch.equal(w0, head.weight) and not all(torch.equal(a, b) for a, b in zip(t0, theta.parameters()))


# ------------------------------------------------------------------ strategy
def test_stream_of_two_datasets_keeps_each_adapter_and_bootstraps_the_meta_prompt(tiny_vit, bench):
    s = _strategy(tiny_vit, bench, epochs=2, test_every_epochs=1)
    backbone0 = {k: v.clone() for k, v in tiny_vit.state_dict().items()}
    theta0 = _params(s.model.meta_prompt)
    s.train(bench.train_stream[0], eval_streams=[])
    ad0 = s.model.adapter(0)
    state0, theta1 = copy.deepcopy(ad0.state_dict()), _params(s.model.meta_prompt)
    k0 = len(ad0.bank)
    mean_fast = [torch.stack([dict(p.named_parameters())[n] for p in ad0.bank.prompters]).mean(0) for n, _ in
                 s.model.meta_prompt.named_parameters()]  # fmt: skip
    for t0, t1, m in zip(theta0, theta1, mean_fast):  # Reptile step toward dataset 0's prompts
        assert torch.allclose(t1, t0 - 0.5 * (t0 - m), atol=1e-5)
    assert k0 > 1 and [h["epoch"] for h in s.history[0]] == [0, 1] and "test_acc" in s.history[0][1]
    res = s.eval_after_experience(bench, 0)
    s.train(bench.train_stream[1], eval_streams=[])
    assert sorted(s.model.adapters, key=int) == ["0", "1"]
    assert all(torch.equal(v, state0[k]) for k, v in s.model.adapter(0).state_dict().items())
    res = s.eval_after_experience(bench, 1)
    assert 0.0 <= res["Top1_Acc_Stream/eval_phase/test_stream"] <= 1.0
    per_exp = s.eval(bench.test_stream)  # every earlier dataset stays evaluable through its own adapter
    assert all(0.0 <= v <= 1.0 for k, v in per_exp.items() if k.startswith("Top1_Acc_Exp"))
    assert all(torch.equal(v, backbone0[k]) for k, v in tiny_vit.state_dict().items())
    logits = s.model(bench.test_stream[1].dataset.eval()[0][0][None], torch.tensor([1]), bench.info.n_classes)
    assert torch.isinf(logits[0, :5]).all() and torch.isfinite(logits[0, 5:]).all()


def test_empty_dataset_and_bad_options_raise(tiny_vit, bench):
    s = _strategy(tiny_vit, bench)
    empty = type(bench.train_stream[0])(dataset=bench.train_stream[0].dataset.subset([]), current_experience=0)
    with pytest.raises(ValueError, match="empty"):
        s.train(empty, eval_streams=[])
    with pytest.raises(ValueError, match="head_tuning_optimizer"):
        _strategy(tiny_vit, bench, head_tuning_optimizer="momemtum")
    with pytest.raises(ValueError, match="backbone_key"):
        _strategy(tiny_vit, bench, backbone_key="swin-b-22k")
    with pytest.raises(ValueError, match="representation_path"):
        _strategy(tiny_vit, bench, backbone_key="vit-b-22k")


def test_vit_22k_feature_is_tanh_of_the_representation_layer(tiny_vit, tmp_path):
    w, b = torch.randn(48, 48), torch.randn(48)
    torch.save({"model": {"pre_logits.fc.weight": w, "pre_logits.fc.bias": b}}, tmp_path / "in21k.pth")
    rep = load_representation(tmp_path / "in21k.pth", 48)
    fz = Featurizer(tiny_vit, "pre_logits_tanh", rep)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = torch.tanh(tiny_vit.forward_features(x)[:, 0] @ w.T + b)
        assert torch.allclose(fz(x), expected, atol=1e-5)


def test_clip_zero_shot_logits_head_freezing_trains(bench):
    from ctta.backbones.clip import CLIPConfig, build_clip

    torch.manual_seed(0)
    clip = build_clip(CLIPConfig(model="ctta-tiny-clip", pretrained=""))
    cbench = build_transfer(
        TransferConfig(datasets=("digits/0/2",), img_size=32, normalization="clip", max_per_split=32)
    )
    s = _strategy(clip, cbench, backbone_key="clip-vit-b", tau=0.3, weight_decay=1e-3)
    s.train(cbench.train_stream[0], eval_streams=[])
    ad = s.model.adapter(0)
    assert ad.text.shape == (5, 32) and ad.readout is None and ad.head is None
    assert s.optimizer.param_groups[0]["weight_decay"] == 1e-3  # CLIP: weight decay on the prompts
    x = cbench.test_stream[0].dataset.eval()[0][0][None]
    with torch.no_grad():
        assert s.model.dataset_logits(x, 0).shape == (1, 5)
