"""Bad input, handled one way everywhere: with on_error="raise" the first bad row stops the ingest with an
IngestError naming file, row and column; with on_error="drop" every bad row is dropped and counted under a
reason. Some conditions are not errors but rows no preference dataset can use (a tie, a prompt with a single
response): those are always dropped and counted.

Row accounting: `rows_in` counts candidate output rows (one per response or pair after list columns are
expanded) plus one per source record that could not be read at all (bad UTF-8, invalid JSON, mistyped), so
rows_in == rows_kept + sum(drops) holds for every ingest."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl

from prefdata.errors import IngestError

OnError = Literal["raise", "drop"]
Message = str | Callable[[dict[str, Any]], str]

ROW = "_row"     # source row: 1-based line for jsonl, 1-based row index for parquet / datasets folders
ITEM = "_item"   # 1-based position inside an expanded list column (completions, answers), else absent


@dataclass
class Problems:
    path: str
    on_error: OnError = "raise"
    drops: Counter = field(default_factory=Counter)
    rows_in: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    media_dir: Path | None = None

    def __post_init__(self):
        if self.on_error not in ("raise", "drop"):
            raise IngestError(self.path, f"on_error must be 'raise' or 'drop', got {self.on_error!r}")

    # ---------------------------------------------------------------- one record (readers)
    def record(self, row: int | None, message: str, *, reason: str, column: str | None = None) -> None:
        """A source record that cannot be read: raise, or count it as one dropped candidate row."""
        if self.on_error == "raise":
            raise IngestError(self.path, message, row=row, column=column)
        self.drops[reason] += 1
        self.rows_in += 1

    # ---------------------------------------------------------------- whole frames (formats, finalize)
    def reject(self, df: pl.DataFrame, bad: pl.Expr, *, reason: str, message: Message,
               column: str | None = None, always_drop: bool = False) -> pl.DataFrame:
        """Rows where `bad` is true are an error (first one raised) or dropped and counted under `reason`.
        `column` may hold "{item}" (the 1-based list position of the row). `always_drop` marks rows that are
        well-formed but unusable (ties, singletons): dropped and counted even with on_error="raise"."""
        mask = df.select(bad.fill_null(False).alias("m")).to_series()
        n = int(mask.sum())
        if n == 0:
            return df
        if self.on_error == "raise" and not always_drop:
            first = df.filter(mask).row(0, named=True)
            raise IngestError(self.path, message(first) if callable(message) else message,
                              row=first.get(ROW), column=where(column, first))
        self.drops[reason] += n
        return df.filter(~mask)

    def explode(self, df: pl.DataFrame, column: str) -> pl.DataFrame:
        """One row per list element, numbered in ITEM. An empty or null list leaves one null row (the
        caller drops it with a reason), so each source record stays accounted for."""
        before = df.height
        # ROW is unique per record before the explode, so the position is a running count within it
        df = df.explode(column, empty_as_null=True, keep_nulls=True).with_columns((pl.int_range(pl.len()).over(ROW) + 1).alias(ITEM))
        self.rows_in += df.height - before   # candidates are now list elements, not source records
        return df

    def dropped(self) -> int:
        return sum(self.drops.values())


def where(column: str | None, row: dict[str, Any]) -> str | None:
    if column is None:
        return None
    return column.replace("{item}", str(row.get(ITEM)))
