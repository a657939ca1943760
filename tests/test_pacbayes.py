"""PAC-Bayes prompt bounds (strategies/pacbayes.py): closed forms on a toy prior computed by hand, the kl-inverse
against a brute-force grid, and the greedy search against a brute-force bound comparison on hand-made features."""

from __future__ import annotations

import math

import pytest
from ctta.strategies.pacbayes import binary_kl, complexity, kl_inverse, prompt_bound, uniform_log_prior


def test_uniform_prior_is_the_papers_baseline():
    assert uniform_log_prior() == pytest.approx(-77 * math.log(49408), rel=1e-15)
    assert uniform_log_prior() == pytest.approx(-832.206, abs=1e-3)  # 77 x 10.807868
    assert uniform_log_prior(3, 10) == pytest.approx(-3 * math.log(10), rel=1e-15)


def test_mcallester_bound_on_a_toy_prior_by_hand():
    # four prompts, prior 1/4 each; n = 100, delta = 0.1, train error 0.2:
    # KL + ln(2 sqrt(n)/delta) = ln 4 + ln 200 = ln 800 = 6.684612; sqrt(6.684612 / 200) = 0.182819
    assert complexity(100, math.log(0.25), 0.1) == pytest.approx(6.684612, abs=1e-6)
    assert prompt_bound(0.2, 100, math.log(0.25), delta=0.1) == pytest.approx(0.382819, abs=1e-6)
    # the uniform CLIP prior on CIFAR-10's 50,000 training images (delta 0.05): complexity term
    # sqrt((832.206 + ln(2 * 223.607 / 0.05)) / 100000) = sqrt(841.305 / 1e5) = 0.091723
    assert prompt_bound(0.0, 50_000, uniform_log_prior(), delta=0.05) == pytest.approx(0.091723, abs=1e-6)


def test_binary_kl_closed_forms():
    assert binary_kl(0.5, 0.25) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(0.5 / 0.75), rel=1e-12)
    assert binary_kl(0.0, 0.3) == pytest.approx(-math.log(0.7), rel=1e-12)
    assert binary_kl(0.3, 0.3) == 0.0 and binary_kl(0.2, 0.0) == math.inf


@pytest.mark.parametrize("q, c", [(0.0, 0.05), (0.1, 0.02), (0.37, 0.3), (0.9, 0.01), (0.5, 5.0)])
def test_kl_inverse_matches_a_brute_force_grid(q, c):
    step = 1e-5
    grid = [i * step for i in range(int(round(1 / step)) + 1)]
    brute = max(p for p in grid if p >= q and binary_kl(q, p) <= c)
    assert brute <= kl_inverse(q, c) <= brute + step
    if q == 0.0:  # kl(0 || p) = -ln(1 - p): p* = 1 - exp(-c)
        assert kl_inverse(q, c) == pytest.approx(1 - math.exp(-c), abs=1e-12)


def test_kl_bound_is_never_looser_than_mcallester():
    for r in (0.0, 0.05, 0.3, 0.6):
        for n in (50, 1000, 50_000):
            kl = prompt_bound(r, n, -20.0, kind="kl")
            assert r <= kl <= prompt_bound(r, n, -20.0, kind="mcallester") + 1e-12
    assert prompt_bound(0.5, 10, uniform_log_prior(), kind="kl") == 1.0  # vacuous: the kl form saturates at 1


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="kind must be one of"):
        prompt_bound(0.1, 10, -1.0, kind="catoni")
    with pytest.raises(ValueError, match="log_prior <= 0"):
        prompt_bound(0.1, 10, 1.0)
    with pytest.raises(ValueError, match="train_error"):
        prompt_bound(1.5, 10, -1.0)
