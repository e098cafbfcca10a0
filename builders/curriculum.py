"""`curriculum` step: assign each pair a training stage (Curry-DPO, methods.md §6(b)).

Difficulty comes from one of:
  margin        rating gap score_chosen - score_rejected; a large gap is an easy pair
  kth_easiest   the paper's construction: stage k holds every prompt's k-th easiest pair (pairs ordered
                by gap, then chosen score, then ids); with `stages` set, pairs past the last stage go to
                the last stage (`overflow: last_stage`) or are dropped with a reason (`overflow: drop`)
  rank_gap      rank_rejected - rank_chosen (needs the rank_* columns that `pairs` carries after `rank`)
  <column>      any numeric column of the pairs table; `higher_is_easier` says which way it points
For margin / rank_gap / <column> the pairs are split into `stages` quantile stages over the easy -> hard
order. Equal values always share a stage (splitting a tie between stages would be arbitrary): a tie
group goes to the stage of its middle position, so stages are as equal in size as the ties allow.
`order: hard_to_easy` reverses the difficulty order. The output is sorted by stage; inside a stage the
input order is kept (a stable sort), so the result is deterministic."""
from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import Field, model_validator

from builders.base import Built, StepConfig, StepContext
from builders.rank import ROW, count_reasons, raise_on_missing
from prefdata.errors import SchemaError


class CurriculumConfig(StepConfig):
    output_kind: ClassVar[str | None] = "pairs"
    stages: int | None = Field(3, ge=1)             # None only with kth_easiest: as many as the largest prompt
    by: str = "margin"                                # margin | kth_easiest | rank_gap | <numeric column>
    order: Literal["easy_to_hard", "hard_to_easy"] = "easy_to_hard"
    higher_is_easier: bool = True                     # for a <column> difficulty
    overflow: Literal["last_stage", "drop"] = "last_stage"   # kth_easiest pairs past the last stage
    missing: Literal["drop", "error"] = "error"       # pairs with no difficulty value (e.g. null margin)

    @model_validator(mode="after")
    def _check(self):
        if self.stages is None and self.by != "kth_easiest":
            raise ValueError("stages: null is only allowed with by: kth_easiest")
        return self

    def label(self) -> str:
        n = "all" if self.stages is None else self.stages
        return f"{n} stages by {self.by}, {self.order.replace('_', ' ')}"


def _difficulty(schema: pl.Schema, cfg: CurriculumConfig) -> tuple[pl.Expr, str, bool]:
    """(value expr, shown name, higher_is_easier)."""
    def need(*cols: str) -> None:
        for c in cols:
            if c not in schema:
                hint = " (run rank before pairs so pairs carry rank_chosen/rank_rejected)" if "rank" in c else ""
                raise SchemaError(f"curriculum by {cfg.by}: pairs have no column {c!r}{hint}", column=c,
                                  expected="numeric")
    if cfg.by in ("margin", "kth_easiest"):
        need("margin")
        return pl.col("margin").cast(pl.Float64), "margin", True
    if cfg.by == "rank_gap":
        need("rank_chosen", "rank_rejected")
        return (pl.col("rank_rejected") - pl.col("rank_chosen")).cast(pl.Float64), "rank gap", True
    need(cfg.by)
    if not schema[cfg.by].is_numeric():
        raise SchemaError(f"curriculum by {cfg.by}: column has type {schema[cfg.by]}, expected a number",
                          column=cfg.by, expected="numeric")
    return pl.col(cfg.by).cast(pl.Float64), cfg.by, cfg.higher_is_easier


def ease_expr(schema: pl.Schema, cfg: CurriculumConfig) -> tuple[pl.Expr, pl.Expr, str]:
    """(difficulty value expr, its ease computed from the column "__v" (smaller = easier), shown name)."""
    value, shown, higher_easier = _difficulty(schema, cfg)
    ease = -pl.col("__v") if higher_easier else pl.col("__v")
    if cfg.order == "hard_to_easy":
        ease = -ease
    return value, ease, shown


def quantile_table(counts: pl.DataFrame, stages: int) -> pl.DataFrame:
    """Stage per distinct ease value from `counts` (columns __ease, cnt, any order), sorted by __ease.
    A tie group (first..last position in the easy->hard order) takes the stage of its middle position,
    so a stage depends only on the value. The counts of several partitions can simply be added first:
    the table, hence every pair's stage, is the same as over the whole table at once."""
    groups = counts.sort("__ease")
    n = max(int(groups["cnt"].sum()), 1)
    last = groups["cnt"].cum_sum() - 1
    first = last - groups["cnt"] + 1
    return groups.with_columns(
        stage=(((first + last) / 2.0) * stages / n).floor().clip(0, stages - 1).cast(pl.Int32))


def lookup_stages(ease: pl.Series, table: pl.DataFrame) -> pl.Series:
    """Each value's stage from a quantile_table: a hash join on the (few) distinct values is about twice
    as fast as a binary search per pair; should any value fail to match bit for bit (e.g. -0.0 against a
    0.0 key), the binary search over the sorted values decides, so every pair gets its stage."""
    joined = pl.DataFrame({"__ease": ease}).join(table.select("__ease", "stage"), on="__ease", how="left",
                                                 maintain_order="left")["stage"]
    if joined.null_count() == 0:
        return joined.cast(pl.Int32).alias("stage")
    at = np.searchsorted(table["__ease"].to_numpy(), ease.to_numpy())
    return pl.Series("stage", table["stage"].to_numpy()[at], dtype=pl.Int32)


def _quantile_stages(ease: pl.Series, stages: int) -> pl.Series:
    """Stage per pair from its place in the easy->hard order, computed on the distinct values, so the
    wide pairs table is never sorted here."""
    counts = ease.value_counts(sort=False, name="cnt").rename({ease.name: "__ease"})
    return lookup_stages(ease, quantile_table(counts, stages))


def build_curriculum(frame: pl.LazyFrame, cfg: CurriculumConfig, ctx: StepContext) -> Built:
    schema = frame.collect_schema()
    value, ease, shown = ease_expr(schema, cfg)
    df = frame.collect()
    # the stage is worked out on a narrow table; the wide pairs table is gathered once at the end
    narrow = df.select(value.alias("__v")).with_row_index(ROW).with_columns(
        __drop=pl.when(pl.col("__v").is_null() | pl.col("__v").is_nan()).then(pl.lit(f"{shown} is null")))
    if cfg.missing == "error":
        raise_on_missing(narrow, "__drop", "curriculum")
    ok = narrow.filter(pl.col("__drop").is_null()).with_columns(__ease=ease)
    if cfg.by == "kth_easiest":
        cs = df["score_chosen"] if "score_chosen" in df.columns else pl.Series([0.0] * df.height)
        keys = df.select("prompt_id", "chosen_id", "rejected_id").with_columns(__cs=cs.fill_null(0.0))[ok[ROW]]
        within = pl.struct(pl.col("__ease"), -pl.col("__cs"), "chosen_id", "rejected_id") \
            .rank("ordinal").over("prompt_id") - 1
        k = pl.concat([ok, keys], how="horizontal").select(within.cast(pl.Int32)).to_series()
        n_stages = cfg.stages or (int(k.max()) + 1 if ok.height else 1)
        ok = ok.with_columns(stage=k.clip(0, n_stages - 1).cast(pl.Int32))
        if cfg.overflow == "drop":
            ok = ok.with_columns(__drop=pl.when(k >= n_stages).then(pl.lit(f"beyond stage {n_stages - 1}")))
    else:
        n_stages = cfg.stages
        ok = ok.with_columns(stage=_quantile_stages(ok["__ease"], n_stages))
    drops = {**count_reasons(narrow, "__drop"), **count_reasons(ok, "__drop")}
    kept = ok.filter(pl.col("__drop").is_null()) if drops else ok
    # stable sort by stage (rows are in input order already): one radix argsort, one gather of the table
    kept = kept[np.argsort(kept["stage"].to_numpy(), kind="stable")]
    out = df[kept[ROW]].with_columns(stage=kept["stage"])
    ranges = kept.group_by("stage").agg(pl.len().alias("n"), pl.col("__v").min().alias("lo"),
                                        pl.col("__v").max().alias("hi")).sort("stage")
    size_of = dict(zip(ranges["stage"].to_list(), ranges["n"].to_list(), strict=True))
    sizes = [int(size_of.get(s, 0)) for s in range(n_stages)]
    info = {"stages": n_stages, "stage_sizes": sizes, "by": cfg.by, "order": cfg.order,
            "stage_ranges": {int(s): [lo, hi] for s, _, lo, hi in ranges.iter_rows()}}
    summary = " · ".join(f"stage {i}: {n:,}" for i, n in enumerate(sizes))
    return Built(out.lazy(), "pairs", drops=drops, rows_in=df.height, rows_kept=out.height, info=info,
                 summary=summary)
