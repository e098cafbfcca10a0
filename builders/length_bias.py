"""Length bias of preference pairs: how often the chosen response is the longer one, and how much longer.

DPO trained on pairs whose chosen answer is systematically longer learns to write longer (the reason LN-DPO,
LD-DPO and SimPO exist), so the build reports it for every pairs output and `pairs` can control it
(builders/pairs.py: `length_balance: {max_ratio: r}`, `balance_longer: true`).

Length unit: characters (Unicode code points of the response text, `str.len_chars`), never the prompt. Chosen
over words because it needs no tokenizer or whitespace convention (CJK text has no spaces), is exact and cheap
(a response's length is computed once, then gathered per pair).

Definitions, for a pair with chosen length c and rejected length r:
  direction   longer (c > r), shorter (c < r) or equal (c == r)
  ratio       c / r; a non-empty chosen over an empty rejected is +inf, two empty texts are 1
  share       chosen_longer / pairs (equal-length pairs count in the denominator)
  mean ratio  the mean of c / r over the pairs with r > 0 (`ratio_pairs` of them)
The counts add up over partitions (`counts` of two halves summed = `counts` of the whole)."""
from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

UNIT = "characters"
COUNT_KEYS = ("pairs", "chosen_longer", "chosen_shorter", "equal_length", "length_ratio_sum", "length_ratio_pairs")


def ratio(c: pl.Expr, r: pl.Expr) -> pl.Expr:
    """chosen/rejected length ratio with the edge cases of the module doc (x/0 = inf for x > 0, 0/0 = 1)."""
    return (pl.when(r > 0).then(c.cast(pl.Float64) / r.cast(pl.Float64))
            .when(c > 0).then(pl.lit(float("inf"))).otherwise(pl.lit(1.0)))


def counts(chosen_len: np.ndarray, rejected_len: np.ndarray) -> dict[str, Any]:
    """Additive counts over pairs given their chosen and rejected lengths."""
    c = np.asarray(chosen_len, dtype=np.int64)
    r = np.asarray(rejected_len, dtype=np.int64)
    pos = r > 0
    return {"pairs": int(c.size), "chosen_longer": int((c > r).sum()), "chosen_shorter": int((c < r).sum()),
            "equal_length": int((c == r).sum()), "length_ratio_sum": float((c[pos] / r[pos]).sum()),
            "length_ratio_pairs": int(pos.sum())}


def add(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in COUNT_KEYS}


def summarize(cnt: dict[str, Any]) -> dict[str, Any]:
    """What the build summary and lineage show: the counts plus the share and the mean ratio (6 decimals)."""
    n, rp = cnt.get("pairs", 0), cnt.get("length_ratio_pairs", 0)
    return {"unit": UNIT, **{k: cnt.get(k, 0) for k in COUNT_KEYS if k != "length_ratio_sum"},
            "chosen_longer_share": round(cnt["chosen_longer"] / n, 6) if n else None,
            "mean_length_ratio": round(cnt["length_ratio_sum"] / rp, 6) if rp else None}


def pairs_counts(df: pl.DataFrame) -> dict[str, Any]:
    """Counts of a pairs table (its `chosen` and `rejected` text columns)."""
    lens = df.select(pl.col("chosen").str.len_chars().fill_null(0).alias("c"),
                     pl.col("rejected").str.len_chars().fill_null(0).alias("r"))
    return counts(lens["c"].to_numpy(), lens["r"].to_numpy())


def line(summary: dict[str, Any]) -> str:
    """One line for the CLI: `chosen longer in 61.2 % of 2,328 pairs · mean length ratio 1.34 (characters)`."""
    if not summary.get("pairs"):
        return "no pairs"
    s = f"chosen longer in {summary['chosen_longer_share'] * 100:.1f} % of {summary['pairs']:,} pairs"
    s += f" ({summary['chosen_shorter']:,} shorter, {summary['equal_length']:,} equal)"
    if summary.get("mean_length_ratio") is not None:
        s += f" · mean chosen/rejected length ratio {summary['mean_length_ratio']:.3f}"
    return s + f" ({summary['unit']})"
