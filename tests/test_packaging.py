"""One namespace: ctta, ctta.scenarios, ctta.strategies; optional extras fail with the install command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ctta.extras import MissingExtraError, require
from tests.helpers import ROOT


def _python(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_subpackages_come_from_the_repository_folders():
    import ctta.scenarios
    import ctta.strategies

    assert ctta.strategies.__path__[0] == str(ROOT / "strategies")
    assert ctta.scenarios.__path__[0] == str(ROOT / "scenarios")


@pytest.mark.parametrize("name", ["strategies", "scenarios"])
def test_bare_import_from_repository_root_names_the_right_import(name):
    r = _python(f"import {name}", cwd=ROOT)
    assert r.returncode != 0
    assert f"import ctta.{name}" in r.stderr and "ImportError" in r.stderr


def test_cli_from_a_project_with_its_own_strategies_and_scenarios_folders(tmp_path):
    for name in ("strategies", "scenarios"):  # a user's experiment code, a common folder name
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    r = subprocess.run([sys.executable, "-m", "ctta", "list"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "mvp" in r.stdout and "si_blurry" in r.stdout


def test_missing_extra_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'ctta\[diffusion\]'"):
        require("diffusers", "diffusion", "DiffTPT's diffusion views")
    with pytest.raises(ValueError, match="not part of a known ctta extra"):
        require("numpy", "diffusion", "x")
