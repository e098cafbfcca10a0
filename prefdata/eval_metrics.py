"""Metrics of an `eval` table (one row per evaluated prompt, model vs baseline): win rate with a seeded
bootstrap interval, length-controlled win rate, KL estimate, per-scorer means. Pure numpy; the formulas are
written out in docs/evaluation.md.

- win rate: mean of per-prompt win values (model 1, tie 0.5, baseline 0).
- bootstrap interval: percentile bootstrap of that mean, resampling prompts with replacement
  (numpy Generator(PCG64(seed)), `n_boot` resamples, the (1-level)/2 and 1-(1-level)/2 quantiles).
- length-controlled win rate: logistic GLM P(model wins) = sigmoid(a + b * tanh(d / sd(d))), d = the model's
  length minus the baseline's per prompt, fitted by Newton's method on the cross-entropy with fractional
  targets (1 / 0.5 / 0) plus a weak ridge (LC_L2) on b only; reported as sigmoid(a), the predicted win rate at
  zero length difference.
- KL(policy || reference): mean over sampled responses of log pi - log pi_ref (summed over the response's
  tokens), with its standard error sample-std / sqrt(n)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from prefdata.errors import PrefdataError

WIN_VALUE = {"model": 1.0, "tie": 0.5, "baseline": 0.0}

# Ridge on the length slope b, in units of the summed cross-entropy: a N(0, 10^2) prior on b (b is the change in
# log-odds across the whole tanh range [-1, 1], so 10 is far beyond any real length effect). It only matters when
# length separates wins from losses perfectly, where the unpenalized fit has no finite optimum.
LC_L2 = 0.01

_BOOT_CHUNK_ELEMENTS = 4_000_000   # resample indices drawn in row blocks of at most this many (bounded memory)


class MetricInputError(PrefdataError, ValueError):
    """Bad input to a metric (unknown winner label, NaN score, empty table). A ValueError for library callers and
    a PrefdataError so the CLI prints it as one line."""


def win_values(winners: Sequence[str]) -> np.ndarray:
    """1.0 / 0.5 / 0.0 per prompt for 'model' / 'tie' / 'baseline'; any other label (None included) is an error
    naming the first offending row."""
    labels = np.asarray(list(winners), dtype=object)
    out = np.full(labels.shape[0], np.nan)
    for label, value in WIN_VALUE.items():
        out[labels == label] = value
    bad = np.flatnonzero(np.isnan(out))
    if bad.size:
        raise MetricInputError(f"winner {labels[bad[0]]!r} at row {int(bad[0])} is not one of "
                               f"{' | '.join(WIN_VALUE)} ({bad.size} such rows)")
    return out


def winners_from_scores(model: np.ndarray, baseline: np.ndarray, *, tie_eps: float = 0.0) -> list[str]:
    """'model' where model - baseline > tie_eps, 'baseline' where it is < -tie_eps, else 'tie'. NaN on either side
    is an error: callers drop unscorable rows first (and account for them)."""
    m, b = np.asarray(model, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if m.shape != b.shape:
        raise MetricInputError(f"model and baseline scores differ in length ({m.shape[0]} vs {b.shape[0]})")
    nan = np.flatnonzero(np.isnan(m) | np.isnan(b))
    if nan.size:
        raise MetricInputError(f"score is NaN at row {int(nan[0])} ({nan.size} rows); drop unscorable rows first")
    if tie_eps < 0:
        raise MetricInputError(f"tie_eps must be >= 0, got {tie_eps}")
    diff = m - b
    return np.where(np.abs(diff) <= tie_eps, "tie", np.where(diff > 0, "model", "baseline")).tolist()


def _values(winners) -> np.ndarray:
    """Win values from labels, or a float array of win values passed through after a range check."""
    if isinstance(winners, np.ndarray) and winners.dtype.kind in "fiub":
        v = winners.astype(np.float64)
        if np.isnan(v).any() or (v < 0).any() or (v > 1).any():
            raise MetricInputError("win values must lie in [0, 1] (no NaN)")
    else:
        v = win_values(winners)
    if v.size == 0:
        raise MetricInputError("no prompts to compute a win rate over")
    return v


def win_rate(winners) -> float:
    """Share of prompts the model wins, ties counting half."""
    return float(_values(winners).mean())


def bootstrap_ci(values: np.ndarray, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (one value per prompt): n_boot resamples of n prompts
    drawn with replacement as Generator(PCG64(seed)).integers(0, n, size=(n_boot, n)), interval = the
    (1-level)/2 and (1+level)/2 quantiles (numpy's default linear interpolation) of the resample means.
    The draws are made in row blocks to bound memory; consecutive blocks consume the generator exactly as one
    (n_boot, n) call does, so the interval is the same."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise MetricInputError("bootstrap needs a non-empty 1-D array of per-prompt values")
    if np.isnan(v).any():
        raise MetricInputError("bootstrap values contain NaN")
    if n_boot < 1:
        raise MetricInputError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise MetricInputError(f"level must be in (0, 1), got {level}")
    n = v.size
    rng = np.random.Generator(np.random.PCG64(seed))
    block = max(1, _BOOT_CHUNK_ELEMENTS // n)
    means = np.empty(n_boot)
    for start in range(0, n_boot, block):
        rows = min(block, n_boot - start)
        means[start:start + rows] = v[rng.integers(0, n, size=(rows, n))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


# ----------------------------------------------------------------------------- length-controlled win rate

def _sigmoid(z: np.ndarray | float) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -np.asarray(z, dtype=np.float64)))


def length_feature(len_model: np.ndarray, len_baseline: np.ndarray) -> np.ndarray:
    """tanh(d / sd(d)) with d = len_model - len_baseline and sd the sample standard deviation (ddof=1) over
    prompts, as AlpacaEval 2 standardizes it; all zeros when sd is 0 or there is a single prompt."""
    d = np.asarray(len_model, dtype=np.float64) - np.asarray(len_baseline, dtype=np.float64)
    if np.isnan(d).any():
        raise MetricInputError("length is missing (NaN) for some prompts")
    sd = float(np.std(d, ddof=1)) if d.size > 1 else 0.0
    return np.tanh(d / sd) if sd > 0 else np.zeros_like(d)


def fit_length_glm(y: np.ndarray, x: np.ndarray, *, l2: float = LC_L2, tol: float = 1e-12,
                   max_iter: int = 200) -> tuple[float, float]:
    """(a, b) minimizing sum_i [softplus(a + b x_i) - y_i (a + b x_i)] + l2/2 * b^2 (the cross-entropy with
    fractional targets y in [0, 1]) by Newton's method with backtracking. Strictly convex whenever the y are not
    all equal (the intercept is unpenalized; the ridge makes the Hessian positive definite), so the optimum is
    unique and finite; with all-equal y the intercept has no finite optimum and the caller handles that case."""
    y, x = np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64)
    ybar = float(y.mean())
    a, b = float(np.log(ybar / (1.0 - ybar))), 0.0

    def objective(a_: float, b_: float) -> float:
        eta = a_ + b_ * x      # y softplus(-eta) + (1-y) softplus(eta): the same loss, no cancellation at large |eta|
        return float(np.sum(y * np.logaddexp(0.0, -eta) + (1.0 - y) * np.logaddexp(0.0, eta)) + 0.5 * l2 * b_ * b_)

    f = objective(a, b)
    slack = 8 * np.finfo(np.float64).eps
    for _ in range(max_iter):
        eta = a + b * x
        p, q = _sigmoid(eta), _sigmoid(-eta)
        r, w = (1.0 - y) * p - y * q, p * q          # p - y without the cancellation of 1 - p near p = 1
        g = np.array([r.sum(), (r * x).sum() + l2 * b])
        if np.max(np.abs(g)) <= tol * max(1.0, y.size):
            return a, b
        h = np.array([[w.sum(), (w * x).sum()], [(w * x).sum(), (w * x * x).sum() + l2]])
        step = -np.linalg.solve(h, g)
        if np.max(np.abs(step)) <= 1e-13 * (1.0 + abs(a) + abs(b)):
            return a, b                                 # the update no longer moves (a, b) in float64
        t, decrease = 1.0, float(g @ step)
        while True:   # Armijo backtracking: Newton's full step can overshoot where p saturates
            a_new, b_new = a + t * step[0], b + t * step[1]
            f_new = objective(a_new, b_new)
            # the slack admits steps whose decrease is below the objective's float64 resolution
            if f_new <= f + 1e-4 * t * decrease + slack * (abs(f) + y.size) or t < 1e-10:
                break
            t *= 0.5
        a, b, f = a_new, b_new, f_new
    raise RuntimeError(f"length GLM did not converge in {max_iter} Newton steps (gradient {g.tolist()})")


def length_controlled_win_rate(wins: np.ndarray, len_model: np.ndarray, len_baseline: np.ndarray, *,
                               l2: float = LC_L2) -> float:
    """Predicted win rate at zero length difference: sigmoid(a) of the GLM
    P(model wins) = sigmoid(a + b * tanh(d / sd(d))). When the length feature is all zero (equal lengths, or a
    single prompt) the fit is b = 0, sigmoid(a) = the raw win rate, returned exactly; when every prompt has the same
    outcome (all wins, all losses, all ties) the fitted curve is flat at that value and it is returned."""
    y = _values(wins)
    lm, lb = np.asarray(len_model, dtype=np.float64), np.asarray(len_baseline, dtype=np.float64)
    if not (y.shape == lm.shape == lb.shape):
        raise MetricInputError(f"wins, len_model and len_baseline differ in length ({y.size}, {lm.size}, {lb.size})")
    x = length_feature(lm, lb)
    if not x.any() or np.all(y == y[0]):
        return float(y.mean())
    a, _ = fit_length_glm(y, x, l2=l2)
    return float(_sigmoid(a))


# ----------------------------------------------------------------------------- KL

def kl_estimate(logratio: np.ndarray) -> tuple[float, float]:
    """(mean, standard error) of per-sequence log pi(y|x) - log pi_ref(y|x) over responses sampled from pi: a Monte
    Carlo estimate of KL(pi || pi_ref). Standard error = sample std (ddof=1) / sqrt(n); NaN for n = 1."""
    v = np.asarray(logratio, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise MetricInputError("KL estimate needs a non-empty 1-D array of per-sequence log-ratios")
    if np.isnan(v).any():
        raise MetricInputError("log-ratios contain NaN; drop the rows without one first")
    se = float(np.std(v, ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
    return float(v.mean()), se


# ----------------------------------------------------------------------------- summary of an eval table

def _column(table: pa.Table, name: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        from prefdata.errors import SchemaError
        raise SchemaError(f"eval table lacks column {name!r} (columns: {', '.join(table.column_names[:16])})",
                          column=name)
    return table.column(name)


def _floats(table: pa.Table, name: str) -> np.ndarray:
    """Column as float64 with nulls as NaN."""
    col = _column(table, name)
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64) if len(col) else np.zeros(0)


def _nan_mean(v: np.ndarray) -> float | None:
    ok = v[~np.isnan(v)]
    return float(ok.mean()) if ok.size else None


def _length_stats(v: np.ndarray) -> dict:
    return {"mean": float(np.mean(v)), "median": float(np.median(v))}


def summarize(table: pa.Table, *, scorers: list[str], n_boot: int = 2000, seed: int = 0,
              winner_by: str | None = None, level: float = 0.95) -> dict:
    """The summary dict of an eval table (contract in docs/evaluation.md). Win metrics read the `winner` column;
    `winner_by` only records what decided it (a scorer or pairwise-judge name; None records 'winner').
    Per-scorer means skip nulls; the KL estimate uses the rows with a logratio and is None when there are none."""
    winners = _column(table, "winner").to_pylist()
    try:
        y = win_values(winners)
    except MetricInputError as e:
        from prefdata.errors import SchemaError
        raise SchemaError(f"eval table column 'winner': {e}", column="winner") from None
    if y.size == 0:
        raise MetricInputError("eval table has no rows")
    len_m, len_b = _floats(table, "length"), _floats(table, "baseline_length")
    if np.isnan(len_m).any() or np.isnan(len_b).any():
        from prefdata.errors import SchemaError
        col = "length" if np.isnan(len_m).any() else "baseline_length"
        raise SchemaError(f"eval table column {col!r} has nulls", column=col,
                          row=int(np.flatnonzero(np.isnan(len_m if col == "length" else len_b))[0]))
    lo, hi = bootstrap_ci(y, n_boot=n_boot, seed=seed, level=level)
    kl = None
    if "logratio" in table.column_names:
        lr = _floats(table, "logratio")
        lr = lr[~np.isnan(lr)]
        if lr.size:
            mean, se = kl_estimate(lr)
            kl = {"mean": mean, "se": se if np.isfinite(se) else None, "n": int(lr.size)}
    return {
        "n": int(y.size), "win_rate": float(y.mean()), "win_rate_ci": [lo, hi], "level": level, "n_boot": n_boot,
        "seed": seed, "lc_win_rate": length_controlled_win_rate(y, len_m, len_b),
        "wins": int((y == 1.0).sum()), "ties": int((y == 0.5).sum()), "losses": int((y == 0.0).sum()),
        "winner_by": winner_by or "winner",
        "length": {"model": _length_stats(len_m), "baseline": _length_stats(len_b)},
        "kl": kl,
        "scorers": {s: {"model_mean": _nan_mean(_floats(table, f"score_{s}")),
                        "baseline_mean": _nan_mean(_floats(table, f"baseline_score_{s}"))} for s in scorers},
        "preference": None,
    }


def table_scorers(table: pa.Table) -> list[str]:
    """Scorer names of an eval table: every `score_<s>` that has its `baseline_score_<s>`."""
    names = set(table.column_names)
    return [c[len("score_"):] for c in table.column_names
            if c.startswith("score_") and f"baseline_{c}" in names]
