"""Shared fixtures: tiny random models, small synthetic/bundled data (all offline, CPU) and the session's shared
runs (one run of the VPT smoke config, one CL demo), each read by several test modules.

Helper functions and constants live in ``tests/helpers.py`` (``ROOT``, ``SMOKE_CONFIGS`` and ``TINY_VIT`` are
re-exported here for modules that still import them from conftest). Under pytest-xdist (``-n 2 --dist loadgroup``)
every test that reads a shared run carries ``pytest.mark.xdist_group(<fixture name>)``, so the run happens once.
"""

from __future__ import annotations

import contextlib
import io
import os

import pytest
import torch

from tests.helpers import ROOT, SMOKE, SMOKE_CONFIGS, TINY_VIT, run_contract

__all__ = ["ROOT", "SMOKE_CONFIGS", "TINY_VIT"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)  # tiny models: one thread is fastest (and robust on a shared 2-core machine)

# The shared VPT run writes checkpoints (the resume tests read them); log.* keys leave the results unchanged.
VPT_RUN_OVERRIDES = ("log.checkpoint_every=256",)


@pytest.fixture(scope="session")
def vpt_run(tmp_path_factory):
    """One finished run of configs/smoke/vpt_digits.yaml (``helpers.ContractRun``), shared; never modify
    ``vpt_run.out``: copy it (``helpers.copy_run``). Run under umask 022, into a folder holding two stale
    temporary files (what ``prepare`` must clean up), with checkpoints every 256 samples."""
    out = tmp_path_factory.mktemp("vpt_run") / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / ".ckpt-stale123.tmp").write_bytes(b"partial")
    (out / ".results.json.abc.tmp").write_text("{")
    old = os.umask(0o022)
    try:
        return run_contract(SMOKE / "vpt_digits.yaml", out, VPT_RUN_OVERRIDES)
    finally:
        os.umask(old)


@pytest.fixture(scope="session")
def cl_demo(tmp_path_factory):
    """``(out_dir, stdout)`` of one reduced ``ctta demo`` (CL) through the CLI, shared by the CLI and demo tests."""
    from ctta.runner.cli import main
    from ctta.runner.demo import REDUCED

    out, buf = tmp_path_factory.mktemp("cl_demo"), io.StringIO()
    with contextlib.redirect_stdout(buf):  # the reduced settings given on the command line
        assert main(["demo", "device=cpu", "log.progress=false", *REDUCED["cl"], f"log.out_dir={out}"]) == 0
    return out, buf.getvalue()


@pytest.fixture
def tiny_vit():
    """A frozen tiny ``PromptedViT`` (random weights, 32 px, patch 8, depth 6, dim 48, 3 heads)."""
    from ctta.backbones.vit import ViTConfig, build_vit

    torch.manual_seed(0)
    return build_vit(ViTConfig(**TINY_VIT))


@pytest.fixture
def digits():
    """sklearn's bundled digits at 32 px: (train, test) with integer ``targets``."""
    from ctta.data.digits import load_digits

    return load_digits(img_size=32)


@pytest.fixture(scope="module")
def tiny():
    """``(model, tokenizer)`` of the tiny random CLIP (``ctta-tiny-clip``), one per test module, seed 0."""
    from ctta.backbones.clip import create_clip

    torch.manual_seed(0)
    model, _, tok = create_clip("ctta-tiny-clip", "")
    return model, tok
