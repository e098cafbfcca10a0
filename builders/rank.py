"""`rank` step: aggregate per-aspect / per-scorer scores into one `score` and a per-prompt `rank`.

Criteria (`by`) name `score`, `rank` (Nectar-style, lower = better; used as -rank so that higher is
better everywhere) or a field of the `scores` struct. Rows with a missing or non-finite value in any
criterion are dropped with a reason naming the criterion (or raise, with `missing: error`): a response
cannot be ranked on evidence it does not have, and inventing a value would bias the pairs built later.

Ranks are competition ranks within a prompt: 1 = best, equal aggregates share a rank and the next rank
skips (1, 2, 2, 4), i.e. rank = 1 + number of strictly better responses."""
from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import field_validator, model_validator

from builders.base import Built, StepConfig, StepContext
from prefdata.errors import SchemaError

ROW = "__row"   # temporary input row index (0-based), used to name offending rows


class RankConfig(StepConfig):
    output_kind: ClassVar[str | None] = None          # same kind as the input
    by: list[str] = ["score"]
    aggregate: Literal["mean", "weighted_mean", "zscore_mean", "borda"] = "mean"
    weights: dict[str, float] | None = None
    missing: Literal["drop", "error"] = "drop"

    @field_validator("by", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check(self):
        if not self.by:
            raise ValueError("by must name at least one criterion")
        if len(set(self.by)) != len(self.by):
            raise ValueError(f"by lists a criterion twice: {self.by}")
        if self.aggregate == "weighted_mean":
            if not self.weights:
                raise ValueError("aggregate weighted_mean needs weights: {criterion: weight}")
            if set(self.weights) != set(self.by):
                raise ValueError(f"weights keys {sorted(self.weights)} must equal by {sorted(self.by)}")
            if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
                raise ValueError("weights must be >= 0 with a positive sum")
        elif self.weights is not None:
            # silently ignoring weights would make a recipe say one thing and do another
            raise ValueError(f"weights are only used by aggregate weighted_mean, not {self.aggregate}")
        return self

    def label(self) -> str:
        return f"by {', '.join(self.by)} ({self.aggregate})"


def prompt_key(df: pl.DataFrame, col: str = "prompt_id") -> pl.Series:
    """Dense UInt32 prompt index (0, 1, ...) in order of first appearance. Integer keys make every later
    per-prompt operation cheap; the usual input (every ingest format) has each prompt's rows contiguous,
    where a run-length id is exact and needs no hashing of strings beyond one distinct count."""
    if df.height == 0:
        return pl.Series("__g", [], pl.UInt32)
    runs = df.select(pl.col(col).rle_id()).to_series()
    # every value starts a run, so "one run per prompt" <=> the run-start values are distinct: counting
    # distinct values over the run starts only (one per prompt) hashes 1/K of the strings
    starts = run_starts(runs)
    if len(starts) == df[col].gather(starts).n_unique():
        return runs.alias("__g").cast(pl.UInt32)
    first = df.select(col).with_row_index("__i").select(pl.col("__i").min().over(col)).to_series()
    return (first.rank("dense") - 1).alias("__g").cast(pl.UInt32)


def run_starts(g: pl.Series) -> np.ndarray:
    """Positions where a run of equal values of `g` starts (0 first); for a sorted dense key, group i
    starts at [i], so numpy ufunc.reduceat over them gives per-group aggregates without hashing."""
    a = g.to_numpy()
    if len(a) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, a[1:] != a[:-1]])


def segment_rank(g: pl.Series, value: pl.Series, *, descending: bool, method: str = "min") -> pl.Series:
    """Rank of `value` within each group `g`, in input order, without a window over many small groups
    (polars' rank().over() is slow for 10^5+ groups): one narrow sort, then run boundaries.
    method "min": 1 + number strictly better (ties share); "average": mean position of the tie run."""
    if len(g) and g.is_sorted():
        biggest = int(g.rle().struct.field("len").max())
        if biggest <= SHIFT_MAX_GROUP:
            return _shift_rank(g, value, biggest, descending=descending, method=method)
    idx = pl.int_range(pl.len(), dtype=pl.Int64)
    # two stable numpy sorts (value, then group: an integer radix sort) beat a two-key polars sort
    v = value.to_numpy()
    o = np.argsort(-v if descending else v, kind="stable")
    o = o[np.argsort(g.to_numpy()[o], kind="stable")]
    t = pl.DataFrame({"g": g, "v": value}).with_row_index("i")[o]
    new_g = pl.col("g").ne_missing(pl.col("g").shift())
    new_t = new_g | pl.col("v").ne_missing(pl.col("v").shift())
    t = t.with_columns(gs=pl.when(new_g).then(idx).forward_fill(), ts=pl.when(new_t).then(idx).forward_fill())
    if method == "min":
        r = pl.col("ts") - pl.col("gs") + 1
    else:
        end_t = new_t.shift(-1, fill_value=True)
        te = pl.when(end_t).then(idx).backward_fill()
        r = (pl.col("ts") + te) / 2.0 - pl.col("gs") + 1
    out = np.empty(len(o), dtype=np.float64)
    out[o] = t.select(r).to_series().to_numpy()
    return pl.Series(out)


SHIFT_MAX_GROUP = 32


def _shift_rank(g: pl.Series, value: pl.Series, biggest: int, *, descending: bool, method: str) -> pl.Series:
    """Ranks when each group's rows are contiguous and groups are small: compare every row with the rows
    1..biggest-1 above and below it (linear passes, no sort) and count better and equal neighbours."""
    better, equal = [], []
    for off in range(1, biggest):
        for sh in (off, -off):
            same = (pl.col("g") == pl.col("g").shift(sh)).fill_null(False)
            other = pl.col("v").shift(sh)
            beats = other > pl.col("v") if descending else other < pl.col("v")
            better.append((same & beats.fill_null(False)).cast(pl.Int64))
            equal.append((same & (other == pl.col("v")).fill_null(False)).cast(pl.Int64))
    zero = [pl.lit(0, pl.Int64)]
    n_better, n_equal = pl.sum_horizontal(better or zero), pl.sum_horizontal(equal or zero)
    rank = 1 + n_better if method == "min" else 1 + n_better + n_equal / 2.0
    return pl.DataFrame({"g": g, "v": value}).select(rank.cast(pl.Float64)).to_series()


def prompts_all_tied(g: pl.Series, score: pl.Series) -> int:
    """Prompts with >= 2 responses whose scores (all non-null here) are all equal."""
    if len(g) and g.is_sorted():
        starts = run_starts(g)
        s = score.to_numpy()
        n = np.diff(np.r_[starts, len(s)])
        lo, hi = np.minimum.reduceat(s, starts), np.maximum.reduceat(s, starts)
        return int(((n >= 2) & (lo == hi)).sum())
    per = pl.DataFrame({"g": g, "s": score}).group_by("g").agg(
        n=pl.len(), lo=pl.col("s").min(), hi=pl.col("s").max())
    return per.filter((pl.col("n") >= 2) & (pl.col("lo") == pl.col("hi"))).height


def criterion_expr(name: str, schema: pl.Schema) -> pl.Expr:
    """The value of one criterion, oriented so that higher is better. Missing column -> SchemaError."""
    if name in ("score", "rank"):
        if name not in schema:
            raise SchemaError(f"rank.by names {name!r} but the input has no column {name!r}",
                              column=name, expected="float64" if name == "score" else "int32")
        value = pl.col(name).cast(pl.Float64)
        return -value if name == "rank" else value
    scores = schema.get("scores")
    fields = [f.name for f in scores.fields] if isinstance(scores, pl.Struct) else []
    if name not in fields:
        have = ", ".join(["score", "rank"] + [f"scores.{f}" for f in fields])
        raise SchemaError(f"rank.by names {name!r} but the input has no column 'scores.{name}' "
                          f"(criteria available: {have})", column=f"scores.{name}", expected="float64")
    return pl.col("scores").struct.field(name).cast(pl.Float64)


def display_name(name: str) -> str:
    return name if name in ("score", "rank") else f"scores.{name}"


def missing_reason(values: dict[str, pl.Expr]) -> pl.Expr:
    """First criterion (in `by` order) that is null / NaN / infinite, as a drop reason; null when all valid.
    One reason per row keeps rows_in == kept + sum(drops) exact."""
    expr = pl.lit(None, dtype=pl.String)
    for name, v in reversed(list(values.items())):
        shown = display_name(name)
        expr = (pl.when(v.is_null()).then(pl.lit(f"{shown} is null"))
                .when(v.is_nan()).then(pl.lit(f"{shown} is NaN"))
                .when(v.is_infinite()).then(pl.lit(f"{shown} is infinite"))
                .otherwise(expr))
    return expr


def count_reasons(df: pl.DataFrame, column: str) -> dict[str, int]:
    """{reason: rows} for the non-null values of `column`, in a stable (sorted) order."""
    counts = df.filter(pl.col(column).is_not_null()).group_by(column).len().sort(column)
    return {r: int(n) for r, n in counts.iter_rows()}


def raise_on_missing(df: pl.DataFrame, reason_col: str, step: str) -> None:
    bad = df.filter(pl.col(reason_col).is_not_null())
    if bad.height:
        first = bad.row(0, named=True)
        reason = first[reason_col]
        raise SchemaError(f"{step}: {reason} in {bad.height} row(s) (set missing: drop to drop them with a reason)",
                          column=reason.split(" is ")[0], expected="finite float64", row=first[ROW])


def build_rank(frame: pl.LazyFrame, cfg: RankConfig, ctx: StepContext) -> Built:
    schema = frame.collect_schema()
    for col in ("prompt_id", "response_id"):
        if col not in schema:
            raise SchemaError(f"rank: input has no column {col!r}", column=col, expected="string")
    values = {name: criterion_expr(name, schema) for name in cfg.by}
    crit = [f"__c{i}" for i in range(len(cfg.by))]
    marked = (frame.with_row_index(ROW)
              .with_columns(*(v.alias(c) for v, c in zip(values.values(), crit, strict=True)),
                            missing_reason(values).alias("__drop"))
              .collect())
    if cfg.missing == "error":
        raise_on_missing(marked, "__drop", "rank")
    drops = count_reasons(marked, "__drop")
    g_all = prompt_key(marked)
    ok = marked["__drop"].is_null()
    g_kept = g_all.filter(ok)        # still grouped by prompt; re-densified below if needed
    if g_kept.is_sorted():
        g_kept = g_kept.rle_id().cast(pl.UInt32)
    if g_all.is_sorted():     # contiguous prompts: per-prompt counts by reduceat over run starts, no hashing
        starts = run_starts(g_all)
        n_valid = np.add.reduceat(ok.to_numpy().astype(np.int64), starts) if len(starts) else starts
    else:
        n_valid = pl.DataFrame({"g": g_all, "ok": ok}).group_by("g").agg(pl.col("ok").sum())["ok"].to_numpy()
    n_prompts, prompts_lt2 = len(n_valid), int((n_valid < 2).sum())

    kept = marked.filter(pl.col("__drop").is_null())
    cols = [pl.col(c) for c in crit]
    if cfg.aggregate == "mean":
        agg = pl.sum_horizontal(cols) / len(cols)
    elif cfg.aggregate == "weighted_mean":
        w = [cfg.weights[name] for name in cfg.by]
        agg = pl.sum_horizontal([c * wi for c, wi in zip(cols, w, strict=True)]) / sum(w)
    elif cfg.aggregate == "zscore_mean":
        # each scorer standardized over the whole dataset (population std); a constant scorer carries
        # no ranking information, so it contributes 0 rather than a division by zero
        z = [pl.when(c.std(ddof=0) > 0).then((c - c.mean()) / c.std(ddof=0)).otherwise(0.0) for c in cols]
        agg = pl.sum_horizontal(z) / len(z)
    else:  # borda: points = responses beaten in the same prompt, a tie counts half
        kept = kept.with_columns(*(segment_rank(g_kept, kept[c], descending=False, method="average")
                                   .alias(c) for c in crit))
        agg = pl.sum_horizontal(cols) / len(cols) - 1.0

    extra = []
    if "score" in schema and "score" not in cfg.by:
        extra.append(pl.col("score").cast(pl.Float64).alias("score_input"))   # keep the source's overall score
    if "rank" in schema and "rank" not in cfg.by:
        extra.append(pl.col("rank").alias("rank_input"))
    out = kept.with_columns(*extra).with_columns(agg.cast(pl.Float64).alias("score")).drop([ROW, "__drop", *crit])
    g = g_kept if g_kept.is_sorted() else prompt_key(out)
    out = out.with_columns(segment_rank(g, out["score"], descending=True).cast(pl.Int32).alias("rank"))
    tied = prompts_all_tied(g, out["score"])
    info = {"by": list(cfg.by), "aggregate": cfg.aggregate, "prompts": n_prompts,
            "prompts_lt2": prompts_lt2, "prompts_all_tied": int(tied)}
    dropped = sum(drops.values())
    summary = f"kept {out.height:,}"
    if dropped:
        summary += f" · dropped {dropped:,} (" + ", ".join(f"{r}: {n:,}" if len(drops) > 1 else r
                                                           for r, n in drops.items()) + ")"
    if prompts_lt2:
        summary += f" · {prompts_lt2:,} prompts with < 2 scored responses"
    return Built(out.lazy(), "responses", drops=drops, rows_in=marked.height, rows_kept=out.height,
                 info=info, summary=summary)
