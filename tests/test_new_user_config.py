"""Issue 21 items 7 and 8: config errors before torch/Avalanche load, a cheap ``ctta list``, ``ctta run --help``
with the run-level keys, and numeric ranges declared next to config fields with one sentence at load time."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from ctta.fields import Range, field_range, range_error
from ctta.registry import BACKBONES, SCENARIOS, STRATEGIES
from ctta.runner.config import ConfigError, cuda_certainly_absent, load_config
from tests.helpers import ROOT

SMOKE = str(ROOT / "configs" / "smoke" / "vpt_digits.yaml")
HEAVY = ("torch", "avalanche", "timm", "open_clip")


def _cli(*args: str, cwd=None) -> dict:
    """Run ``ctta ARGS`` in a fresh interpreter; its exit code, stderr/stdout and which heavy modules it imported."""
    code = (
        "import io, json, sys, contextlib\n"
        "from ctta.runner.cli import main\n"
        "err, out = io.StringIO(), io.StringIO()\n"
        "with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):\n"
        f"    rc = main({list(args)!r})\n"
        f"print(json.dumps({{'rc': rc, 'err': err.getvalue(), 'out': out.getvalue(),\n"
        f"                  'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["strategy.lrr=1"], "unknown key(s) ['lrr'] in strategy (VPTConfig); valid keys: ['batch_size'"),
        (["log.outdir=x"], "unknown key(s) ['outdir'] in log (LogConfig)"),
        (["strategy.name=mvpp"], "strategy.name: unknown strategy 'mvpp'; valid strategy names: ['"),
        (["seedd=2"], "unknown top-level key(s) ['seedd']"),
        (["log.checkpoint_every=-1"], "log.checkpoint_every=-1 is out of range: set log.checkpoint_every to a value"),
        (["strategy.lr=-0.01"], "strategy.lr=-0.01 is out of range: set strategy.lr to a value > 0"),
        (["scenario.n_experiences=0"], "scenario.n_experiences=0 is out of range: set scenario.n_experiences to a"),
    ],
)
def test_config_errors_come_before_torch_and_avalanche(overrides, message):
    res = _cli("run", SMOKE, *overrides)
    assert res["rc"] == 2 and res["err"].startswith("ctta: config error: ") and message in res["err"], res
    assert res["err"].count("\n") == 1  # one line
    assert res["heavy"] == []


def test_yaml_typo_comes_before_torch(tmp_path):
    (tmp_path / "typo.yaml").write_text("scenario: {name: class_incremental, dataset: digits\nbackbone: x\n")
    res = _cli("run", "typo.yaml", cwd=tmp_path)
    assert res["rc"] == 2 and "typo.yaml: not valid YAML at line 2, column 9" in res["err"]
    assert res["heavy"] == []


@pytest.mark.skipif(not cuda_certainly_absent(), reason="this machine may have CUDA")
def test_device_cuda_without_cuda_comes_before_torch():
    res = _cli("run", SMOKE, "device=cuda")
    assert res["rc"] == 2
    assert "device=cuda but CUDA is not available on this machine; use device=cpu or device=auto" in res["err"]
    assert res["heavy"] == []


def test_ctta_list_is_cheap_and_clean():
    res = _cli("list")
    assert res["rc"] == 0 and res["heavy"] == []
    out = res["out"]
    for title in ("strategies:", "scenarios:", "backbones:", "shipped backbones", "datasets"):
        assert title in out
    lines = out.splitlines()
    for name in ("mvp", "tpt", "si_blurry", "vit", "digits", "folder", "ctta-tiny-vit", "ctta-tiny-clip-digits"):
        assert any(line.split()[:1] == [name] for line in lines), name
    assert "``" not in out and "Registered builder" not in out and 'BACKBONES["' not in out  # no docstring markup
    mvp = next(line for line in lines if line.split()[:1] == ["mvp"])
    assert "mask and visual prompt tuning" in mvp
    tiny = next(line for line in lines if line.split()[:1] == ["ctta-tiny-vit"])
    assert "pretrained: ctta" in tiny and "92.0 %" in tiny


def test_run_help_lists_run_level_keys_with_examples(capsys):
    from ctta.runner.cli import make_parser

    with pytest.raises(SystemExit):
        make_parser().parse_args(["run", "--help"])
    out = capsys.readouterr().out
    for example in ("seed=2", "device=cpu", "precision=fp32", "resume=true", "overwrite=true", "log.out_dir=",
                    "log.loggers=[text,csv]", "log.checkpoint_every=500", "log.progress=false"):  # fmt: skip
        assert example in out, example
    assert "ctta run configs/smoke/vpt_digits.yaml strategy.lr=0.02" in out


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("strategy.lr=-0.01", "strategy.lr=-0.01 is out of range: set strategy.lr to a value > 0"),
        ("strategy.lr=0", "strategy.lr=0 is out of range: set strategy.lr to a value > 0"),
        (
            "strategy.online_iters=0",
            "strategy.online_iters=0 is out of range: set strategy.online_iters to a value >= 1",
        ),
        (
            "scenario.n_experiences=0",
            "scenario.n_experiences=0 is out of range: set scenario.n_experiences to a value >= 1",
        ),
    ],
)
def test_bad_values_are_one_sentence_at_load_time(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(SMOKE, [override])
    assert str(e.value) == message


@pytest.mark.parametrize(
    "config", ["mvp_digits", "coop_digits", "maple_digits", "l2p_digits", "tpt_digits", "damvp_digits"]
)
def test_learning_rate_range_declared_for_each_method(config):
    with pytest.raises(ConfigError, match=r"strategy.lr=-1 is out of range: set strategy.lr to a value > 0"):
        load_config(str(ROOT / "configs" / "smoke" / f"{config}.yaml"), ["strategy.lr=-1"])


def test_declared_ranges_hold_their_defaults():
    for reg in (STRATEGIES, SCENARIOS, BACKBONES):
        for name in reg:
            cfg = reg.get(name).config
            for f in dataclasses.fields(cfg) if cfg else ():
                rng = field_range(f)
                if rng is not None and f.default is not dataclasses.MISSING:
                    assert rng.contains(f.default), (name, f.name)


def test_range_words():
    assert Range(gt=0).describe() == "> 0" and Range(ge=0, le=1).describe() == ">= 0 and <= 1"
    assert range_error("a.b", 2, Range(ge=0, le=1)) == "a.b=2 is out of range: set a.b to a value >= 0 and <= 1"
    assert range_error("a.b", None, Range(gt=0)) is None  # optional fields unset


def test_cuda_presence_guess_never_refuses_a_gpu_machine(monkeypatch):
    """Only a machine that certainly has no CUDA is refused before torch loads; a GPU node, WSL or ROCm means maybe."""
    import importlib.metadata
    from pathlib import Path

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2.14.1+cu130")
    for node in ("/dev/nvidia0", "/dev/nvidiactl", "/proc/driver/nvidia/version", "/dev/dxg", "/dev/kfd"):
        monkeypatch.setattr(Path, "exists", lambda self, node=node: str(self) == node)
        assert not cuda_certainly_absent(), node
    monkeypatch.setattr(Path, "exists", lambda self: False)
    assert cuda_certainly_absent()  # no device node, no driver
    monkeypatch.setattr(Path, "exists", lambda self: True)
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2.14.1+cpu")
    assert cuda_certainly_absent()  # a CPU build of torch cannot use CUDA
