"""`lists` step: ranked lists for listwise losses (lists contract, best first).

Per prompt the responses sorted by score (descending; input position breaks ties so the order is
deterministic), cut to the top `k`. Prompts with fewer than `k` scored responses are dropped (a
listwise loss with a fixed K cannot use them); `k: null` keeps every response (at least 2). Ranks are
recomputed inside the list (competition ranks: 1 = best, ties share a rank). A tie that straddles the
top-k cut is cut by input position and counted in info (`lists_cut_inside_tie`)."""
from __future__ import annotations

from typing import ClassVar

import polars as pl
from pydantic import Field

from builders.base import Built, StepConfig, StepContext
from builders.pairs import DECIMALS
from builders.rank import ROW, count_reasons, missing_reason
from prefdata.errors import SchemaError

PROMPT_LEVEL = ("prompt_id", "prompt", "messages")
GROUPING = ("split", "cluster_id", "source")     # kept on the list when one value per prompt (split side, ...)


def prompt_constant(df: pl.DataFrame) -> tuple[str, ...]:
    """GROUPING columns with one value per prompt; one that varies within a prompt is per response and,
    like every other per-response column, not part of a list."""
    cols = [c for c in GROUPING if c in df.columns]
    if not cols or df.height == 0:
        return tuple(cols)
    n = df.group_by("prompt_id").agg(pl.col(c).n_unique() for c in cols).select(pl.col(cols).max()).row(0)
    return tuple(c for c, k in zip(cols, n, strict=True) if k <= 1)


class ListsConfig(StepConfig):
    output_kind: ClassVar[str | None] = "lists"
    k: int | None = Field(None, ge=2)           # list length; None = all responses of the prompt
    drop_all_tied: bool = True                   # a list whose scores are all equal teaches nothing

    def label(self) -> str:
        return f"top-{self.k}" if self.k else "all responses"


def build_lists(frame: pl.LazyFrame, cfg: ListsConfig, ctx: StepContext) -> Built:
    schema = frame.collect_schema()
    for col, typ in (("prompt_id", "string"), ("prompt", "string"), ("response_id", "string"),
                     ("response", "string"), ("score", "float64")):
        if col not in schema:
            raise SchemaError(f"lists: input has no column {col!r}", column=col, expected=typ)
    need = cfg.k or 2
    df = (frame.with_columns(pl.col("score").cast(pl.Float64)).with_row_index(ROW)
          .with_columns(missing_reason({"score": pl.col("score")}).alias("__drop")).collect())
    # 1-based list position among the scored responses of the prompt; input position breaks ties
    valid = df.filter(pl.col("__drop").is_null()).with_columns(
        _pos=pl.struct(-pl.col("score"), ROW).rank("ordinal").over("prompt_id"))
    top = valid.filter(pl.col("_pos") <= cfg.k) if cfg.k else valid
    spread = top.group_by("prompt_id").agg(
        (pl.col("score").max() - pl.col("score").min()).round(DECIMALS).alias("spread"), pl.len().alias("m"))
    reason_by_prompt = spread.select("prompt_id", pl.when(pl.col("m") < need)
                                     .then(pl.lit(f"prompt has < {need} responses"))
                                     .when(pl.lit(cfg.drop_all_tied) & (pl.col("spread") == 0))
                                     .then(pl.lit(f"top {cfg.k} all tied" if cfg.k else "all responses tied"))
                                     .alias("prompt_reason"))
    acct = (df.select(ROW, "prompt_id", "__drop")
            .join(valid.select(ROW, "_pos"), on=ROW, how="left")
            .join(reason_by_prompt, on="prompt_id", how="left")
            .with_columns(reason=pl.coalesce(
                "__drop", "prompt_reason",
                pl.when(pl.col("_pos") > (cfg.k or df.height)).then(pl.lit(f"beyond top-{cfg.k}")))))
    drops = count_reasons(acct, "reason")
    keep_prompts = reason_by_prompt.filter(pl.col("prompt_reason").is_null()).select("prompt_id")
    rows = top.join(keep_prompts, on="prompt_id", how="semi").sort(["prompt_id", "_pos"])
    # the k-th and (k+1)-th response tied: the cut is by input position, report how often
    if cfg.k:
        kth = valid.filter(pl.col("_pos") == cfg.k).select("prompt_id", pl.col("score").alias("kth"))
        nxt = valid.filter(pl.col("_pos") == cfg.k + 1).select("prompt_id", pl.col("score").alias("nxt"))
        cut_in_tie = kth.join(nxt, on="prompt_id").join(keep_prompts, on="prompt_id", how="semi") \
            .filter(pl.col("kth") == pl.col("nxt")).height
    else:
        cut_in_tie = 0
    aggs = [pl.col(c).first() for c in PROMPT_LEVEL + prompt_constant(df) if c in df.columns and c != "prompt_id"]
    aggs += [pl.col("response").alias("responses"), pl.col("response_id").alias("response_ids"),
             pl.col("score").alias("scores"),
             pl.col("score").rank("min", descending=True).cast(pl.Int32).alias("ranks")]
    if "model" in df.columns:
        aggs.append(pl.col("model").alias("models"))
    first_row = rows.group_by("prompt_id").agg(pl.col(ROW).min().alias("_first"))
    out = (rows.group_by("prompt_id").agg(aggs).join(first_row, on="prompt_id")
           .sort("_first").drop("_first"))     # prompts in input order
    out = out.select(["prompt_id", "prompt", "responses", "response_ids", "scores", "ranks"]
                     + [c for c in out.columns if c not in ("prompt_id", "prompt", "responses", "response_ids",
                                                            "scores", "ranks")])
    rows_kept = df.height - sum(drops.values())
    info = {"lists": out.height, "k": cfg.k, "prompts": df.select(pl.col("prompt_id").n_unique()).item(),
            "lists_cut_inside_tie": cut_in_tie}
    summary = f"{out.height:,} lists of {cfg.k or 'all'}"
    # prompts dropped whole, by reason (the drops count their rows)
    by_prompt = reason_by_prompt.drop_nulls("prompt_reason").group_by("prompt_reason").len().sort("prompt_reason")
    if by_prompt.height:
        summary += " · prompts dropped: " + ", ".join(f"{n:,} {r}" for r, n in by_prompt.iter_rows())
    if cut_in_tie:
        summary += f" · {cut_in_tie:,} lists cut inside a tie (input order decides)"
    return Built(out.lazy(), "lists", drops=drops, rows_in=df.height, rows_kept=rows_kept, info=info,
                 summary=summary)
