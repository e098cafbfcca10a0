"""What the keyed steps (`near_dedup`, `decontaminate`: planned once over all prompts, then applied to each
partition) share when they apply a plan: the per-prompt columns joined on, the marked rows turned into a result."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import polars as pl

from builders.base import Built, StepContext, drops_by_source
from builders.rank import count_reasons


def with_prompt_columns(frame: pl.LazyFrame, per_prompt: pl.DataFrame) -> pl.LazyFrame:
    """`frame` with the columns of `per_prompt` (keyed by prompt_id) added: only the key column is joined, so
    the input's columns are shared with the output, not copied."""
    looked_up = frame.select("prompt_id").join(per_prompt.lazy(), on="prompt_id", how="left",
                                                maintain_order="left").drop("prompt_id")
    return pl.concat([frame, looked_up], how="horizontal")


def marked_result(df: pl.DataFrame, drop: str, kind: str, info: dict[str, Any], summary: str) -> Built:
    """The rows of `df` whose `drop` column (a reason) is null, with the drops counted by reason (and by source
    in a mixture build); the `drop` column itself is left out."""
    out = df.filter(pl.col(drop).is_null()).drop(drop)
    return Built(out.lazy(), kind, drops=count_reasons(df, drop), rows_in=df.height, rows_kept=out.height,
                 info=info, summary=summary, drops_by_source=drops_by_source(df, drop))


def bind_plan(apply: Callable[..., Built], plan: Any) -> Callable[..., Built]:
    """The step function `fn(frame, cfg, ctx)` applying a plan made over the whole input (a partitioned build
    runs it on each partition)."""
    def fn(frame: pl.LazyFrame, cfg: Any, ctx: StepContext) -> Built:
        return apply(frame, cfg, plan)
    return fn
