"""Kendall τ-b in the ensemble agreement report checked against scipy.stats.kendalltau (variant "b").

Per prompt τ-b is what scipy gives on that prompt's two score vectors. A prompt on which either scorer
is constant has no τ (scipy returns NaN): it is left out of the τ mean / median and of
`prompts_with_tau`, while its response pairs still count in pairwise agreement and the disagreement share."""
from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pytest
from scipy.stats import kendalltau

from builders.ensemble import agreement_report


def _frame(groups: list[tuple[np.ndarray, np.ndarray]]) -> pl.DataFrame:
    return pl.DataFrame({
        "prompt_id": [f"p{i}" for i, (a, _) in enumerate(groups) for _ in a],
        "a": np.concatenate([a for a, _ in groups]).astype(float),
        "b": np.concatenate([b for _, b in groups]).astype(float)})


def _scipy(groups) -> tuple[list[float], int, int, float]:
    taus, conc, disc, any_dis, n_pairs = [], 0, 0, 0, 0
    for a, b in groups:
        t = kendalltau(a, b, variant="b").statistic
        if np.isfinite(t):
            taus.append(float(t))
        for i, j in itertools.combinations(range(len(a)), 2):
            s = np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])
            conc, disc, any_dis, n_pairs = conc + (s > 0), disc + (s < 0), any_dis + (s < 0), n_pairs + 1
    return taus, int(conc), int(disc), any_dis / n_pairs


def test_exactly_reversed_orders_give_minus_one():
    # the case: four responses ranked in exactly opposite orders
    rep = agreement_report(_frame([(np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1]))]), ["a", "b"])
    got = rep["scorer_pairs"]["a~b"]
    assert got["kendall_tau_mean"] == -1.0 and got["kendall_tau_median"] == -1.0
    assert got["pairwise_agreement"] == 0.0 and got["prompts_with_tau"] == 1
    assert rep["disagreement_share"] == 1.0 and rep["response_pairs"] == 6


@pytest.mark.parametrize("seed", range(5))
def test_tau_b_matches_scipy_with_ties_reversals_and_constant_scorers(seed):
    rng = np.random.default_rng(seed)
    groups = []
    for g in range(30):
        n = int(rng.integers(2, 9))
        a = rng.integers(0, 4, n).astype(float)             # few levels: many ties
        kind = g % 5
        b = (-a + rng.integers(0, 2, n) * 0.5 if kind == 0 else    # mostly reversed (negative τ)
             a[::-1].copy() if kind == 1 else
             np.full(n, 7.0) if kind == 2 else                      # constant scorer: no τ
             rng.normal(size=n) if kind == 3 else
             a + rng.integers(0, 3, n))
        groups.append((a, b))
    groups.append((np.arange(6.0), np.arange(6.0)[::-1]))          # exactly reversed
    rep = agreement_report(_frame(groups), ["a", "b"])
    taus, conc, disc, share = _scipy(groups)
    got = rep["scorer_pairs"]["a~b"]
    assert got["prompts_with_tau"] == len(taus) < len(groups)
    assert min(taus) < 0
    assert got["kendall_tau_mean"] == pytest.approx(float(np.mean(taus)), abs=1e-12)
    assert got["kendall_tau_median"] == pytest.approx(float(np.median(taus)), abs=1e-12)
    assert -1.0 <= got["kendall_tau_mean"] <= 1.0
    assert got["pairwise_agreement"] == pytest.approx(conc / (conc + disc), abs=1e-12)
    assert rep["disagreement_share"] == pytest.approx(share, abs=1e-12)


def test_all_constant_scorer_gives_no_tau_but_keeps_agreement():
    groups = [(np.array([1.0, 2.0, 3.0]), np.array([5.0, 5.0, 5.0])),
              (np.array([3.0, 1.0]), np.array([0.0, 0.0]))]
    assert all(np.isnan(kendalltau(a, b, variant="b").statistic) for a, b in groups)
    rep = agreement_report(_frame(groups), ["a", "b"])
    got = rep["scorer_pairs"]["a~b"]
    assert got == {"pairwise_agreement": None, "kendall_tau_mean": None, "kendall_tau_median": None,
                   "prompts_with_tau": 0}
    assert rep["response_pairs"] == 4 and rep["disagreement_share"] == 0.0
