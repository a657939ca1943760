"""The README's Python examples run as printed (offline, CPU), each in a fresh interpreter and folder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, SCRIPT_SECTION, python_blocks, readme_section

BLOCKS = python_blocks((ROOT / "README.md").read_text())
# the Avalanche-script example runs once, in tests/test_script_numbers.py, which also checks what it prints
RUN_ELSEWHERE = python_blocks(readme_section(SCRIPT_SECTION))[:1]


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(code, tmp_path):
    if code in RUN_ELSEWHERE:
        pytest.skip("run and checked by tests/test_script_numbers.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    assert r.returncode == 0, f"README example failed:\n{code}\n--- stderr ---\n{r.stderr[-3000:]}"
    assert r.stdout.strip(), "the example prints its result"
