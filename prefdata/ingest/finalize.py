"""Shared finishing of a format's canonical frame: ids, NaN/inf checks, missing values, duplicates,
prompts with a single response, packing `scores.<x>` columns into the `scores` struct, and the contract
check. Carried source columns are the user's data and pass through unchecked (only the contract's columns
are). For the `prompts` kind an empty prompt is bad input and a repeated prompt is dropped. Empty responses are kept on purpose: dropping them is the `filter` step's job, where the drop is
recorded with its reason in the built dataset's lineage."""
from __future__ import annotations

from collections.abc import Callable

import polars as pl
import pyarrow as pa

from prefdata.ingest import ids
from prefdata.ingest.formats.base import Plan
from prefdata.ingest.problems import ITEM, ROW, Problems, where
from prefdata.schema import conform, validate


def finalize(df: pl.DataFrame, plan: Plan, p: Problems, *, carried: list[str] | tuple[str, ...] = ()) -> pa.Table:
    df = _nonfinite(df, plan, p, skip=set(carried))
    if plan.kind == "prompts":
        df = _prompts(df, plan, p)
    elif plan.kind == "responses":
        df = _responses(df, plan, p)
    else:
        df = _pairs(df, plan, p)
    df = df.drop([c for c in (ROW, ITEM) if c in df.columns]).rechunk()
    table = _small_types(_pack_scores(df.to_arrow()))
    table = conform(table, plan.kind, source=p.path)
    return validate(table, plan.kind, source=p.path)


def _origin(plan: Plan, col: str) -> str:
    return plan.origin.get(col, col)


def _nonfinite(df: pl.DataFrame, plan: Plan, p: Problems, skip: set[str]) -> pl.DataFrame:
    for col in df.columns:
        if col in skip or df.schema[col] not in (pl.Float64, pl.Float32):
            continue
        c = pl.col(col)
        df = p.reject(df, c.is_nan() | c.is_infinite(), reason="NaN/inf score", column=_origin(plan, col),
                      message=lambda r, col=col: f"score is {r[col]} (expected a finite number or null)")
    return df


def _required(df: pl.DataFrame, plan: Plan, p: Problems, cols: tuple[str, ...]) -> pl.DataFrame:
    for col in cols:
        if col not in df.columns:
            raise AssertionError(f"format transform did not produce {col!r}")  # bug in a format module
        df = p.reject(df, pl.col(col).is_null(), reason=f"missing {col}", column=_origin(plan, col),
                      message=f"missing or null {col} (expected a string)")
    return df


def _fill_id(df: pl.DataFrame, col: str, make: Callable[[pl.DataFrame], list[str]]) -> pl.DataFrame:
    """`col` as the source gives it; `make(rows)` computes the ids of the rows without one, and only of those
    (hashing every text of a source that brings its own ids was most of its ingest time)."""
    if col not in df.columns:
        return df.with_columns(pl.Series(col, make(df), dtype=pl.String))
    missing = df[col].is_null().arg_true()
    if missing.is_empty():
        return df
    return df.with_columns(df[col].scatter(missing, pl.Series(col, make(df[missing]), dtype=pl.String)))


def _prompt_ids(df: pl.DataFrame) -> list[str]:
    return ids.prompt_ids(df["prompt"].to_list())


def _duplicates(df: pl.DataFrame, keys: list[str], plan: Plan, p: Problems, *, what: str) -> pl.DataFrame:
    if not df.select(keys).is_duplicated().any():   # the usual case: one hashing pass, none of the windows below
        return df
    has_item = ITEM in df.columns
    first_row = pl.col(ROW).first().over(keys)
    df = df.with_columns(first_row.alias("_dup_row"),
                         (pl.col(ITEM).first().over(keys) if has_item else pl.lit(None)).alias("_dup_item"),
                         (pl.int_range(pl.len()).over(keys) > 0).alias("_dup"))
    col = plan.origin.get(keys[-1])

    def message(r):
        other = f"row {r['_dup_row']}" + (f" ({where(col, {ITEM: r['_dup_item']})})" if has_item and col else "")
        return f"duplicate {what} {r[keys[-1]][:16]}… within prompt {r['prompt_id'][:16]}…; first seen at {other}"

    df = p.reject(df, pl.col("_dup"), reason=f"duplicate {what}", column=col, message=message)
    return df.drop("_dup_row", "_dup_item", "_dup")


def _prompts(df: pl.DataFrame, plan: Plan, p: Problems) -> pl.DataFrame:
    df = p.reject(df, pl.col("prompt").is_null() | (pl.col("prompt").str.strip_chars() == ""), reason="empty prompt",
                  column=_origin(plan, "prompt"), message="empty or missing prompt (expected non-empty text)")
    given_ids = "prompt_id" in df.columns
    df = _fill_id(df, "prompt_id", _prompt_ids)
    # one row per prompt: generation steps make N candidates per row, so a repeat would double its samples
    what = "prompt_id" if given_ids else "prompt"
    df = p.reject(df, pl.int_range(pl.len()).over("prompt_id") > 0, reason=f"duplicate {what}", always_drop=True,
                  message="")
    first = [c for c in ("prompt_id", "prompt", "messages", "images") if c in df.columns]
    return df.select(*first, pl.exclude(first))


def _responses(df: pl.DataFrame, plan: Plan, p: Problems) -> pl.DataFrame:
    df = _required(df, plan, p, ("prompt", "response"))
    df = _fill_id(df, "prompt_id", _prompt_ids)
    df = _fill_id(df, "response_id", lambda d: ids.response_ids(d["prompt_id"].to_list(), d["response"].to_list()))
    df = _duplicates(df, ["prompt_id", "response_id"], plan, p, what="response_id")
    if plan.min_responses > 1:
        few = pl.len().over("prompt_id") < plan.min_responses
        df = p.reject(df, few, reason=f"prompt has fewer than {plan.min_responses} responses", always_drop=True,
                      message="")
    return df


def _pairs(df: pl.DataFrame, plan: Plan, p: Problems) -> pl.DataFrame:
    df = _required(df, plan, p, ("prompt", "chosen", "rejected"))
    df = p.reject(df, pl.col("chosen") == pl.col("rejected"), reason="chosen equals rejected", always_drop=True,
                  message="")
    df = _fill_id(df, "prompt_id", _prompt_ids)
    df = _fill_id(df, "chosen_id", lambda d: ids.response_ids(d["prompt_id"].to_list(), d["chosen"].to_list()))
    df = _fill_id(df, "rejected_id", lambda d: ids.response_ids(d["prompt_id"].to_list(), d["rejected"].to_list()))
    df = df.with_columns(pl.concat_str("chosen_id", "rejected_id").alias("_pair_id"))
    df = _duplicates(df, ["prompt_id", "_pair_id"], plan, p, what="pair")
    df = df.drop("_pair_id")
    for col in ("score_chosen", "score_rejected"):
        if col not in df.columns:
            df = df.with_columns(pl.lit(None, pl.Float64).alias(col))
    df = df.with_columns((pl.col("score_chosen") - pl.col("score_rejected")).alias("margin"))
    df = p.reject(df, pl.col("margin") < 0, reason="chosen scored below rejected", column=_origin(plan, "score_chosen"),
                  message=lambda r: f"score_chosen {r['score_chosen']} < score_rejected {r['score_rejected']}")
    defaults = {"weight": pl.lit(1.0), "stage": pl.lit(0, pl.Int32), "strategy": pl.lit(plan.strategy)}
    return df.with_columns([v.alias(k) for k, v in defaults.items() if k not in df.columns])


def _small_types(table: pa.Table) -> pa.Table:
    """polars hands out large_string / large_list; extra columns get the plain types the contract uses."""
    def small(t: pa.DataType) -> pa.DataType:
        if pa.types.is_large_string(t):
            return pa.string()
        if pa.types.is_large_list(t) or pa.types.is_list(t):
            return pa.list_(small(t.value_type))
        if pa.types.is_struct(t):
            return pa.struct([pa.field(f.name, small(f.type)) for f in t])
        return t
    return table.cast(pa.schema([pa.field(f.name, small(f.type)) for f in table.schema]))


def _pack_scores(table: pa.Table) -> pa.Table:
    """`scores.<name>` float columns -> one `scores` struct (per-aspect / per-scorer ratings)."""
    for prefix, target in (("scores_chosen.", "scores_chosen"), ("scores_rejected.", "scores_rejected"),
                           ("scores.", "scores")):
        cols = [c for c in table.column_names if c.startswith(prefix)]
        if not cols:
            continue
        arrays = [table.column(c).cast(pa.float64()).combine_chunks() for c in cols]
        struct = pa.StructArray.from_arrays(arrays, names=[c[len(prefix):] for c in cols])
        table = table.drop(cols).append_column(target, struct)
    return table
