"""Contract over every smoke config (one per registered strategy): trains, loss finite, backbone bit-identical,
only prompt/head parameters change, an episodic test-time method adapts every sample, metrics and outputs written
(``tests/helpers.check_contract``). The VPT run is the session's shared one (``vpt_run``, also read by the
resume, fail-early and divergence tests)."""

from __future__ import annotations

import pytest

from ctta.registry import STRATEGIES
from ctta.runner.config import load_config
from tests.helpers import NO_ADAPTATION, SMOKE, SMOKE_CONFIGS, check_contract, run_contract

SHARED = {"vpt_digits": "vpt_run"}  # smoke config -> the session fixture holding its run
CASES = [
    pytest.param(p, id=p.stem, marks=[pytest.mark.xdist_group(SHARED[p.stem])] if p.stem in SHARED else [])
    for p in SMOKE_CONFIGS
]


def test_every_strategy_has_a_smoke_config():
    covered = {load_config(p).strategy.name for p in SMOKE_CONFIGS}
    assert set(STRATEGIES) <= covered, f"strategies without configs/smoke/*.yaml: {set(STRATEGIES) - covered}"


@pytest.mark.parametrize("path", CASES)
def test_smoke_config_contract(path, tmp_path, request):
    shared = SHARED.get(path.stem)
    check_contract(request.getfixturevalue(shared) if shared else run_contract(path, tmp_path / "run"))


def test_the_contract_notices_an_episodic_method_that_never_adapts(tmp_path):
    """TPT with zero tuning steps predicts zero-shot: the contract's adaptation check must fail on it."""
    run = run_contract(SMOKE / "tpt_digits.yaml", tmp_path / "run", NO_ADAPTATION["tpt"])
    with pytest.raises(AssertionError, match="equal the unadapted ones: no step taken"):
        check_contract(run)
