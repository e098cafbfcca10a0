"""What every builder step shares: the frozen config base, the result type and the step context.

A step is `fn(frame: pl.LazyFrame, cfg: <StepConfig subclass>, ctx: StepContext) -> Built`.
Row accounting is at the step's *input* granularity: rows_in == rows_kept + sum(drops.values()),
where rows_kept counts input rows that contributed to the output. Output row count is separate."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict

TableKind = Literal["prompts", "responses", "pairs", "lists"]


class StepConfig(BaseModel):
    """Base of every step config: frozen, unknown fields are an error (typos fail at parse time)."""
    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass
class Built:
    frame: pl.LazyFrame                      # the step's output (lazy where the step allows)
    kind: TableKind                          # which contract the output follows
    drops: dict[str, int] = field(default_factory=dict)   # input rows dropped, by reason
    rows_in: int | None = None               # input rows (None: runner counts them)
    rows_kept: int | None = None             # input rows that made it into the output
    info: dict[str, Any] = field(default_factory=dict)    # step-specific report (stage sizes, agreement, ...)
    summary: str = ""                        # one line for the CLI ("3,912 pairs · 2 prompts all tied")
    # mixture builds (input has a `source` column): drops by source, then reason (see drops_by_source); the
    # runner attributes prompt-local steps itself, other dropping steps set this
    drops_by_source: dict[str, dict[str, int]] | None = None


@dataclass
class StepContext:
    """What a step may need beyond its input: where media paths resolve, where shards go (resume),
    the catalog (for scorers writing intermediate versions) and a seed."""
    base_dir: Path = Path(".")
    work_dir: Path | None = None             # per-build scratch dir for resumable shards
    catalog: Any = None                      # catalog.Catalog or None
    seed: int = 0
    progress: bool = True


SOURCE = "source"                            # mixture entry name, one per prompt (prefdata/mixture.py)


def drops_by_source(frame: pl.DataFrame, reason: str) -> dict[str, dict[str, int]] | None:
    """{source: {reason: n}} over the rows of `frame` whose `reason` column is not null (the dropped input
    rows); None when `frame` has no `source` column (not a mixture build)."""
    if SOURCE not in frame.columns:
        return None
    counts = (frame.filter(pl.col(reason).is_not_null()).group_by(SOURCE, reason).len()
              .sort(SOURCE, reason, nulls_last=True))
    out: dict[str, dict[str, int]] = {}
    for src, why, n in counts.iter_rows():
        out.setdefault(str(src), {})[why] = int(n)
    return out
