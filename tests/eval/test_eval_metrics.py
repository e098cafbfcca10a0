"""prefdata.eval_metrics on hand-made tables: win rate with ties half, the seeded percentile bootstrap (recomputed
here independently with numpy), the length-controlled win rate on constructed cases (length explains every win,
none, or is independent of the outcome), the KL estimator and the summary of an eval table."""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from prefdata.errors import PrefdataError, SchemaError
from prefdata.eval_metrics import (
    LC_L2,
    MetricInputError,
    bootstrap_ci,
    fit_length_glm,
    kl_estimate,
    length_controlled_win_rate,
    length_feature,
    summarize,
    table_scorers,
    win_rate,
    win_values,
    winners_from_scores,
)

WINNERS = ["model", "model", "tie", "baseline", "model", "tie", "baseline", "model"]   # 4 + 2 * 0.5 = 5 of 8


# ----------------------------------------------------------------------------- win rate

def test_win_values_and_rate_ties_half():
    assert win_values(WINNERS).tolist() == [1.0, 1.0, 0.5, 0.0, 1.0, 0.5, 0.0, 1.0]
    assert win_rate(WINNERS) == 0.625
    assert win_rate(["tie", "tie"]) == 0.5 and win_rate(["baseline"]) == 0.0
    assert win_rate(np.array([1.0, 0.5, 0.5, 0.0])) == 0.5        # win values pass through


def test_bad_winner_labels_name_the_row():
    with pytest.raises(ValueError, match=r"winner 'Model' at row 2 is not one of model \| tie \| baseline"):
        win_values(["model", "tie", "Model", None])
    with pytest.raises(MetricInputError, match="winner None at row 0"):
        win_rate([None])
    with pytest.raises(PrefdataError, match="no prompts"):          # also a PrefdataError: one line in the CLI
        win_rate([])


def test_winners_from_scores_with_tie_eps():
    m = np.array([0.9, 0.2, 0.50, 0.51, 3.0])
    b = np.array([0.1, 0.8, 0.50, 0.50, 3.0])
    assert winners_from_scores(m, b) == ["model", "baseline", "tie", "model", "tie"]
    assert winners_from_scores(m, b, tie_eps=0.02) == ["model", "baseline", "tie", "tie", "tie"]
    with pytest.raises(ValueError, match="score is NaN at row 1"):
        winners_from_scores(np.array([1.0, np.nan]), np.array([0.0, 0.0]))


# ----------------------------------------------------------------------------- bootstrap

def _independent_interval(values: np.ndarray, n_boot: int, seed: int, level: float) -> tuple[float, float]:
    """The documented scheme written out: n_boot resamples of all n prompts with replacement in one draw."""
    rng = np.random.Generator(np.random.PCG64(seed))
    means = values[rng.integers(0, values.size, size=(n_boot, values.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def test_bootstrap_interval_equals_an_independent_computation():
    v = win_values(WINNERS)
    got = bootstrap_ci(v, n_boot=2000, seed=7)
    assert got == _independent_interval(v, 2000, 7, 0.95)
    lo, hi = got
    assert lo <= 0.625 <= hi and 0.0 <= lo < hi <= 1.0
    # resample means of 8 values in {0, .5, 1} are multiples of 1/16, and so are both quantiles here
    assert got == (5 / 16, 14 / 16)
    assert bootstrap_ci(v, n_boot=2000, seed=7) == got                  # deterministic by seed
    assert bootstrap_ci(v, n_boot=2000, seed=7, level=0.5) == _independent_interval(v, 2000, 7, 0.5)
    # on that coarse grid another seed lands on the same grid points; on continuous values it moves
    scores = np.random.default_rng(1).normal(size=30)
    a, b = bootstrap_ci(scores, seed=7), bootstrap_ci(scores, seed=8)
    assert a != b and a[0] < scores.mean() < a[1] and b[0] < scores.mean() < b[1]
    assert a == _independent_interval(scores, 2000, 7, 0.95)


def test_bootstrap_in_blocks_equals_one_draw():
    # 3000 prompts: the resample indices are drawn in two row blocks (bounded memory); same interval as one draw
    v = np.random.default_rng(0).choice([0.0, 0.5, 1.0], size=3000)
    assert bootstrap_ci(v, n_boot=2000, seed=3) == _independent_interval(v, 2000, 3, 0.95)


def test_bootstrap_constant_values_and_bad_input():
    assert bootstrap_ci(np.ones(5), n_boot=100, seed=0) == (1.0, 1.0)
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci(np.array([]))
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci(np.array([1.0, np.nan]))


# ----------------------------------------------------------------------------- length-controlled win rate

def test_lc_length_explains_every_win_symmetric_is_one_half():
    # longer on 5 prompts and wins exactly those, shorter by the same amount on 5 and loses those: the problem is
    # symmetric under (d, y) -> (-d, 1 - y), so the unique optimum has a = 0
    wins = np.array([1.0] * 5 + [0.0] * 5)
    lm, lb = np.array([20] * 5 + [10] * 5), np.array([10] * 5 + [20] * 5)
    assert length_controlled_win_rate(wins, lm, lb) == pytest.approx(0.5, abs=1e-6)
    a, b = fit_length_glm(wins, length_feature(lm, lb))
    assert abs(a) < 1e-9 and b > 5          # the length slope carries every win


def _separable_8_2_by_hand(t: float, lam: float) -> float:
    """LC for 8 wins at x = +t and 2 losses at x = -t, from the stationarity conditions worked out by hand:
      d/da: 8(p+ - 1) + 2 p- = 0,  d/db: t[8(p+ - 1) - 2 p-] + lam b = 0
      => p- = lam b / (4t), 1 - p+ = lam b / (16t), and logit(p+) - logit(p-) = 2 b t,
    one equation in b solved by bisection; then a = logit(p+) - b t and LC = sigmoid(a)."""
    def logit(p):
        return math.log(p / (1 - p))

    def f(b):
        return logit(1 - lam * b / (16 * t)) - logit(lam * b / (4 * t)) - 2 * b * t

    lo, hi = 1e-12, 4 * t / lam * (1 - 1e-12)      # f(lo) > 0 > f(hi): p- runs from 0 to 1
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
    b = 0.5 * (lo + hi)
    a = logit(1 - lam * b / (16 * t)) - b * t
    return 1 / (1 + math.exp(-a))


def test_lc_length_explains_every_win_8_of_10():
    # longer on 8 of 10 prompts (by 10 tokens) and wins exactly those; shorter by 10 on 2 and loses them.
    # raw win rate 0.8. Any crossing point between d = -10 and d = +10 separates the data, so the data cannot say
    # what happens at d = 0; the fit's intercept balances the two groups' tail masses instead:
    # 8 e^{-(a+bt)} = 2 e^{a-bt} as lam -> 0, so sigmoid(a) -> sqrt(8/2) / (1 + sqrt(8/2)) = 2/3, not 1/2.
    wins = np.array([1.0] * 8 + [0.0] * 2)
    lm, lb = np.array([20] * 8 + [10] * 2), np.array([10] * 8 + [20] * 2)
    lc = length_controlled_win_rate(wins, lm, lb)
    t = math.tanh(10 / np.std(lm - lb, ddof=1))
    assert lc == pytest.approx(_separable_8_2_by_hand(t, LC_L2), abs=1e-9)
    assert lc == pytest.approx(0.668117, abs=1e-6)
    # the ridge (LC_L2 = 0.01) keeps it within 0.002 of the 2/3 limit, and it falls toward 2/3 as the ridge weakens
    assert 2 / 3 < lc < 2 / 3 + 0.002
    assert length_controlled_win_rate(wins, lm, lb, l2=1e-4) == pytest.approx(_separable_8_2_by_hand(t, 1e-4),
                                                                              abs=1e-9)
    assert 2 / 3 < length_controlled_win_rate(wins, lm, lb, l2=1e-4) < lc < 0.8


def test_lc_length_explains_every_win_8_of_10_balanced_at_the_boundary():
    # the same 8 wins / 2 losses, but the prompts nearest to zero length difference are balanced: 2 wins at
    # d = +10, 2 losses at d = -10 (6 further wins at d = +30). The tail balance then sets a -> 0 as the ridge
    # vanishes (LC -> 1/2); at LC_L2 = 0.01 the ridge leaves 0.0225 (it pulls toward the raw 0.8), and the residual
    # shrinks with the ridge. Optimality checked through the gradient written out here.
    wins = np.array([1.0] * 8 + [0.0] * 2)
    d = np.array([10, 10, 30, 30, 30, 30, 30, 30, -10, -10])
    lc = length_controlled_win_rate(wins, d, np.zeros(10))
    assert lc == pytest.approx(0.522545, abs=1e-6)
    assert 0.5 < lc < 0.525
    x = length_feature(d, np.zeros(10))
    a, b = fit_length_glm(wins, x)
    p = 1 / (1 + np.exp(-(a + b * x)))
    assert abs((p - wins).sum()) < 1e-10 and abs(((p - wins) * x).sum() + LC_L2 * b) < 1e-10
    weaker = [length_controlled_win_rate(wins, d, np.zeros(10), l2=lam) for lam in (1e-3, 1e-4, 1e-6)]
    assert lc > weaker[0] > weaker[1] > weaker[2] > 0.5 and weaker[2] - 0.5 < 1e-4


def test_lc_equal_lengths_is_the_raw_win_rate():
    wins = win_values(WINNERS)
    lengths = np.array([7, 12, 3, 40, 9, 9, 1, 30])
    assert abs(length_controlled_win_rate(wins, lengths, lengths) - 0.625) < 1e-9


def test_lc_wins_independent_of_length_is_the_raw_win_rate():
    # each length difference appears once with each sign and the same outcome at +d and -d: sum(y x) = 0 = sum(x),
    # so b = 0 solves the (strictly convex) fit and sigmoid(a) = mean(y)
    d = np.array([5, -5, 5, -5, 10, -10, 10, -10])
    wins = np.array([1.0, 1.0, 0.0, 0.0, 0.5, 0.5, 1.0, 1.0])
    assert abs(length_controlled_win_rate(wins, 100 + d, np.full(8, 100)) - 0.625) < 1e-9
    _, b = fit_length_glm(wins, length_feature(100 + d, np.full(8, 100)))
    assert abs(b) < 1e-12


def test_lc_all_wins_and_single_prompt():
    assert length_controlled_win_rate(np.ones(4), np.array([5, 6, 7, 8]), np.array([1, 1, 1, 1])) == 1.0
    assert length_controlled_win_rate(np.array([0.0]), np.array([5]), np.array([9])) == 0.0
    with pytest.raises(ValueError, match="differ in length"):
        length_controlled_win_rate(np.ones(3), np.ones(2), np.ones(3))


# ----------------------------------------------------------------------------- KL

def test_kl_estimate_by_hand():
    mean, se = kl_estimate(np.array([0.5, 1.5, 1.0, 2.0]))
    # mean 1.25; squared deviations .5625 + .0625 + .0625 + .5625 = 1.25; var (ddof 1) = 1.25 / 3; se = sd / 2
    assert mean == 1.25 and se == pytest.approx(math.sqrt(1.25 / 3) / 2, rel=1e-15)
    assert kl_estimate(np.array([-0.25, 0.25])) == (0.0, pytest.approx(0.25, rel=1e-15))
    m1, s1 = kl_estimate(np.array([3.0]))
    assert m1 == 3.0 and math.isnan(s1)
    with pytest.raises(ValueError, match="NaN"):
        kl_estimate(np.array([1.0, np.nan]))


# ----------------------------------------------------------------------------- summary

def eval_table() -> pa.Table:
    """8 prompts in the `eval` contract with two scorers (one null score on the model side) and a logratio with one
    null (a row whose reference pass failed)."""
    n = 8
    return pa.table({
        "prompt_id": [f"p{i}" for i in range(n)], "prompt": [f"q{i}" for i in range(n)],
        "response": [f"m{i}" for i in range(n)], "baseline_response": [f"b{i}" for i in range(n)],
        "winner": WINNERS,
        "score_rm": pa.array([0.9, 0.8, 0.5, 0.1, 0.7, 0.4, 0.2, None], pa.float64()),
        "baseline_score_rm": pa.array([0.1, 0.2, 0.5, 0.6, 0.3, 0.4, 0.9, 0.2], pa.float64()),
        "score_short": pa.array([1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0], pa.float64()),
        "baseline_score_short": pa.array([0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0], pa.float64()),
        "length": pa.array([10, 12, 8, 30, 11, 9, 40, 14], pa.int64()),
        "baseline_length": pa.array([10, 10, 8, 10, 10, 9, 10, 10], pa.int64()),
        "logratio": pa.array([0.5, 1.5, None, 1.0, 2.0, None, None, None], pa.float64()),
    })


def test_summarize_exact_values():
    t = eval_table()
    assert table_scorers(t) == ["rm", "short"]
    s = summarize(t, scorers=["rm", "short"], n_boot=500, seed=11, winner_by="rm")
    assert s["n"] == 8 and s["win_rate"] == 0.625
    assert (s["wins"], s["ties"], s["losses"]) == (4, 2, 2)
    assert s["win_rate_ci"] == list(_independent_interval(win_values(WINNERS), 500, 11, 0.95))
    assert (s["level"], s["n_boot"], s["seed"], s["winner_by"]) == (0.95, 500, 11, "rm")
    assert s["length"] == {"model": {"mean": 16.75, "median": 11.5}, "baseline": {"mean": 9.625, "median": 10.0}}
    assert s["kl"] == {"mean": 1.25, "se": pytest.approx(math.sqrt(1.25 / 3) / 2, rel=1e-15), "n": 4}
    assert s["scorers"]["rm"] == {"model_mean": pytest.approx(3.6 / 7, rel=1e-15),
                                  "baseline_mean": pytest.approx(3.2 / 8, rel=1e-15)}
    assert s["scorers"]["short"] == {"model_mean": 0.625, "baseline_mean": 0.375}
    assert s["lc_win_rate"] == length_controlled_win_rate(win_values(WINNERS), t["length"].to_numpy(),
                                                          t["baseline_length"].to_numpy())
    assert s["preference"] is None
    assert summarize(t, scorers=[], n_boot=500, seed=11)["winner_by"] == "winner"


def test_summarize_without_logratio_and_bad_tables():
    t = eval_table()
    no_kl = t.set_column(t.schema.get_field_index("logratio"), "logratio", pa.nulls(8, pa.float64()))
    assert summarize(no_kl, scorers=[], n_boot=10)["kl"] is None
    assert summarize(t.drop_columns(["logratio"]), scorers=[], n_boot=10)["kl"] is None
    with pytest.raises(SchemaError, match="lacks column 'score_judge'"):
        summarize(t, scorers=["judge"], n_boot=10)
    bad = t.set_column(t.schema.get_field_index("winner"), "winner", pa.array(WINNERS[:7] + ["draw"]))
    with pytest.raises(SchemaError, match="'winner': winner 'draw' at row 7"):
        summarize(bad, scorers=[], n_boot=10)
    with pytest.raises(SchemaError, match="lacks column 'baseline_length'"):
        summarize(t.drop_columns(["baseline_length"]), scorers=[], n_boot=10)
