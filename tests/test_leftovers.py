"""Regression tests for the leftovers of issues 11 and 13 (each failed before its fix)."""

from __future__ import annotations

import pytest
import torch
from avalanche.benchmarks.scenarios import DatasetExperience

from tests.helpers import linear_data as _data
from tests.helpers import linear_strategy as _strategy


# ------------------------------------------------------------------ issue 13: shuffle=True on an online stream
def test_online_train_refuses_shuffle_true():
    train = _data()
    s, rec, _ = _strategy(train)
    exp = DatasetExperience(dataset=train, current_experience=0)
    with pytest.raises(ValueError, match="stream order"):
        s.train(exp, eval_streams=[], shuffle=True)
    assert rec.updates == 0  # refused before anything trained
    with pytest.raises(ValueError, match="stream order"):
        s.make_train_dataloader(shuffle=True)
    s.train(exp, eval_streams=[], shuffle=False)  # explicit False (the protocol) is fine
    assert rec.batches[0] == list(train.targets[:8])


# ------------------------------------------------------------------ issue 13: DiffTPT view-cache messages
def test_corrupt_settings_json_is_reported_as_corrupt_with_the_command_line_key(tmp_path):
    from ctta.strategies.difftpt.view_cache import CacheCorruptError, CacheMismatchError, ViewCache

    settings = {"model": "tiny", "steps": 2}
    cache = ViewCache(tmp_path, settings)
    path = cache.dir / "settings.json"
    path.write_text('{"digest": "abc", "settings": {"model": ')  # truncated write
    with pytest.raises(CacheCorruptError) as err:
        ViewCache(tmp_path, settings)
    msg = str(err.value)
    assert f"corrupt/unreadable settings.json at {path}" in msg and "differ" not in msg
    assert "strategy.diffusion.on_mismatch=regenerate" in msg
    path.write_text('["not", "a", "record"]')
    with pytest.raises(CacheCorruptError, match="corrupt/unreadable settings.json"):
        ViewCache(tmp_path, settings)
    path.write_text('{"digest": "abc", "settings": {"model": "other", "steps": 2}}')  # a real mismatch
    with pytest.raises(CacheMismatchError, match="differ") as err:
        ViewCache(tmp_path, settings)
    assert "strategy.diffusion.on_mismatch=regenerate" in str(err.value)
    path.write_text("{")
    again = ViewCache(tmp_path, settings, on_mismatch="regenerate")  # corrupt file set aside, folder rebuilt
    assert again.dir.is_dir() and (again.dir / "settings.json").is_file()


def test_difftpt_messages_print_keys_as_set_on_the_command_line():
    import re
    from pathlib import Path

    import ctta.strategies.difftpt as pkg

    folder = Path(pkg.__file__).parent
    for name in ("view_cache.py", "diffusion.py", "strategy.py", "config.py"):
        text = (folder / name).read_text()
        bare = [m.group(0) for m in re.finditer(r"(?<![\w.])diffusion\.[a-z_]+=", text)]
        assert not bare, (name, bare)  # every fix key reads strategy.diffusion.<field>=


# ------------------------------------------------------------------ issue 13: n_experiences > classes, before data
@pytest.mark.parametrize(
    ("config", "override", "needle"),
    [
        ("vpt_digits.yaml", "scenario.n_experiences=11", "scenario.n_experiences=11 but digits has 10 classes"),
        ("mvp_digits.yaml", "scenario.n_tasks=50", "scenario.n_tasks=50 but digits has 10 classes"),
    ],
)
def test_more_experiences_than_classes_fails_before_data_loads(tmp_path, capsys, monkeypatch, config, override, needle):
    from ctta.data import catalogue
    from ctta.runner.cli import main
    from tests.helpers import ROOT

    def no_data(*a, **k):
        raise AssertionError("data loaded before the class-count check")

    monkeypatch.setattr(catalogue.DatasetEntry, "load", no_data)
    out = tmp_path / "out"
    capsys.readouterr()
    argv = ["run", str(ROOT / "configs" / "smoke" / config), "log.progress=false", "device=cpu", f"log.out_dir={out}"]
    assert main([*argv, override]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert needle in err and "at most 10" in err, err
    assert not out.exists()


def test_class_count_guard_on_n_experiences():
    from types import SimpleNamespace as NS

    from ctta.runner.guards import RunError, catalogue_class_count, check_class_count

    assert catalogue_class_count("digits") == 10 and catalogue_class_count("cifar100") == 100
    assert catalogue_class_count("digits/0/2") is None  # not known without loading: the scenario checks it
    cfg = NS(scenario=NS(name="class_incremental", params=NS(dataset="digits", n_experiences=11, classes_per_exp=None)))
    with pytest.raises(RunError, match="scenario.n_experiences=11 but digits has 10 classes"):
        check_class_count(cfg)
    cfg.scenario.params.n_experiences = 10
    check_class_count(cfg)  # one class per experience is fine
    cfg.scenario.params = NS(dataset="cifar100", n_experiences=101, shuffle="none")  # multilane_cil
    with pytest.raises(RunError, match="at most 100"):
        check_class_count(cfg)


# ------------------------------------------------------------------ issue 13: offline detected without retries
@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt fails at once (as offline) and is counted."""
    import socket

    from ctta.backbones import hub

    attempts = []

    def refuse(address, *a, **k):
        attempts.append(address)
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: refuse(address))
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    hub.reset_probe_cache()
    yield attempts
    hub.reset_probe_cache()


def test_hub_probe_is_one_short_cached_connection(no_network, monkeypatch):
    import socket

    from ctta.backbones import hub

    reason = hub.hub_unreachable()
    assert reason and "huggingface.co:443 unreachable" in reason and "TimeoutError" in reason
    assert hub.hub_unreachable() == reason and len(no_network) == 1  # cached: probed once
    timeouts = []
    monkeypatch.setattr(socket, "create_connection", lambda a, timeout=None: timeouts.append(timeout) or _Conn())
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example:8443")
    assert hub.hub_address() == ("hub.example", 8443)
    assert hub.hub_unreachable() is None and timeouts == [hub.PROBE_TIMEOUT_S] and hub.PROBE_TIMEOUT_S <= 2


class _Conn:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_variables_are_honoured_without_probing(no_network, monkeypatch, var):
    from ctta.backbones import hub

    monkeypatch.setenv(var, "1")
    assert hub.hub_unreachable() == f"{var}=1" and no_network == []


def test_download_under_the_guard_fails_at_once_with_the_backbone_offline_message(no_network, tmp_path, monkeypatch):
    import huggingface_hub
    import timm
    from huggingface_hub import constants

    from ctta.backbones import hub, vit

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    before = constants.HF_HUB_OFFLINE
    name = "vit_tiny_patch16_224.augreg_in21k"
    with hub.hub_download_guard() as reason:
        assert reason and constants.is_offline_mode()
        with pytest.raises(Exception) as err:
            timm.create_model(name, pretrained=True, num_classes=0)
        n_probe = len(no_network)
    assert n_probe == 1  # the probe only: the download made no connection attempt (no retries)
    assert constants.HF_HUB_OFFLINE == before  # restored
    assert vit._is_download_error(err.value)  # create_vit turns it into its offline message
    assert "backbone.pretrained=/path/to/file" in str(vit._offline_error(name, err.value))
    with pytest.raises(Exception) as err:  # open_clip's hub path the same way
        with hub.hub_download_guard():
            huggingface_hub.hf_hub_download("timm/vit_base_patch16_clip_224.openai", "open_clip_model.safetensors")
    assert len(no_network) == 1


# ------------------------------------------------------------------ issue 11: CLIP normalisation per weights
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # e.g. SigLIP / many LAION-trained weights


@pytest.fixture(scope="module")
def tiny_clip_pair():
    """Two copies of the tiny CLIP: one with OpenAI's statistics (the default), one whose weights say HALF."""
    import copy

    from ctta.backbones.clip import create_clip

    torch.manual_seed(0)
    model, _, tok = create_clip("ctta-tiny-clip", "")
    other = copy.deepcopy(model)
    other.visual.image_mean, other.visual.image_std = HALF  # what open_clip sets from the pretrained config
    return model, other, tok


def _raw_views(b=2, n=6, seed=0):
    return torch.rand(b, n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))  # (B, N, 3, H, W) in [0, 1]


def _norm(x, stats):
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in stats)
    return (x - mean) / std


def test_normalisation_stats_come_from_the_weights(tiny_clip_pair):
    from ctta.data.normalization import (
        OPENAI_CLIP_MEAN,
        OPENAI_CLIP_STD,
        clip_image_stats,
        pretrained_clip_stats,
        renormalize,
    )

    openai = (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    model, other, _ = tiny_clip_pair
    assert clip_image_stats(model) == openai and clip_image_stats(other) == HALF
    assert pretrained_clip_stats("ViT-B-16", "openai") == openai
    assert pretrained_clip_stats("ViT-B/16", "openai") == openai
    assert pretrained_clip_stats("ViT-B-16-SigLIP", "webli") == HALF
    raw = _raw_views()
    x = _norm(raw, openai)
    assert renormalize(x, openai, openai) is x  # a no-op: OpenAI runs are unchanged bit for bit
    torch.testing.assert_close(renormalize(x, openai, HALF), _norm(raw, HALF), atol=1e-6, rtol=0)


def test_test_time_and_transfer_scenarios_record_their_normalisation():
    from ctta.scenarios.test_time import TestTimeConfig, build_test_time
    from ctta.scenarios.transfer import TransferConfig, build_transfer

    from ctta.data.normalization import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    from ctta.data.transfer_datasets import NORMALIZATION

    bench = build_test_time(TestTimeConfig(dataset="digits", n_views=2, resolution=32, max_samples=2), seed=0)
    assert bench.info.normalization == (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    cfg = TransferConfig(datasets=("digits/0/2",), img_size=32, normalization="clip", max_per_split=4)
    assert build_transfer(cfg).info.normalization == NORMALIZATION["clip"]


def test_prompt_tuning_maps_views_to_the_weights_statistics(tiny_clip_pair):
    from ctta.strategies.tpt import TPT

    from ctta.data.digits import DIGIT_NAMES
    from ctta.data.normalization import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    model, other, tok = tiny_clip_pair
    openai = (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    raw = _raw_views()
    kw = dict(classnames=list(DIGIT_NAMES), tokenizer=tok, selection_p=0.5, tta_steps=1, device="cpu", evaluator=None)
    strat = TPT(model=other, **kw)
    assert strat.model_normalization == HALF and strat.input_normalization == openai
    got = strat.adapt_and_predict(_norm(raw, openai))  # the test_time scenario's views
    want = strat.tuner.predict_many(_norm(raw, HALF))  # what these weights expect
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    same = TPT(model=model, **kw)  # OpenAI weights: views go in untouched
    x = _norm(raw, openai)
    torch.testing.assert_close(same.adapt_and_predict(x), same.tuner.predict_many(x), atol=0, rtol=0)
    explicit = TPT(model=other, view_normalization=HALF, **kw)  # views already in the weights' statistics
    assert explicit.normalization_of(None) == HALF
    torch.testing.assert_close(explicit.adapt_and_predict(_norm(raw, HALF)), want, atol=0, rtol=0)


def test_difftpt_denormalises_with_the_streams_statistics(tiny_clip_pair, tmp_path):
    from ctta.strategies.difftpt import DiffTPT, denormalize

    from ctta.data.digits import DIGIT_NAMES
    from tests._tiny_diffusion import tiny_diffusion_config

    raw = _raw_views(1, 3)
    torch.testing.assert_close(denormalize(_norm(raw, HALF), HALF), raw, atol=1e-6, rtol=0)
    _, other, tok = tiny_clip_pair
    kw = dict(classnames=list(DIGIT_NAMES), tokenizer=tok, n_diffusion_views=2, tta_steps=1, device="cpu")
    runs = {}
    for stats in (HALF, None):  # views in HALF; the same images in OpenAI's statistics (the default)
        strat = DiffTPT(model=other, view_normalization=stats, diffusion=tiny_diffusion_config(tmp_path), **kw)
        x = _norm(raw, stats or (strat.input_normalization))
        runs[stats] = strat.add_diffusion_views(x)
        assert strat.diffusion_views.generated in (0, 2)
    half, openai = runs[HALF], runs[None]
    # the same source image (de-normalised with the right statistics) -> the same cached diffusion images,
    # returned in each stream's own normalisation
    torch.testing.assert_close(denormalize(half, HALF), denormalize(openai, None), atol=1e-5, rtol=0)
