"""What a source format declares: how to recognise one of its records, which fields to read (an Arrow
schema, so the reader can type-check them and name a mistyped value's row and column), and a transform from
those fields to canonical columns. Shared finishing (ids, NaN checks, duplicates, schema) lives in
prefdata.ingest.finalize so every format treats bad input the same way."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import polars as pl
import pyarrow as pa

from prefdata.ingest.problems import Problems

Kind = Literal["prompts", "responses", "pairs"]
Record = dict[str, Any]

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)
PL_MESSAGES = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))


@dataclass(frozen=True)
class Plan:
    kind: Kind
    schema: pa.Schema                              # source fields read (others are ignored)
    required: tuple[str, ...]                      # source fields that must be present in the first record
    transform: Callable[[pl.DataFrame, Problems], pl.DataFrame]
    # canonical column -> source column it came from, for error messages ("{item}" = list position)
    origin: dict[str, str] = field(default_factory=dict)
    strategy: str = "given"                        # pairs: recorded in the `strategy` column
    min_responses: int = 2                         # responses: prompts with fewer are dropped (counted)
    carry_rest: bool = False                       # carry every source column the format does not read
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Format:
    name: str
    summary: str                                   # one line for `prefdata ingest --help` and error messages
    matches: Callable[[Record], bool] | None       # None: never auto-detected (needs --format)
    plan: Callable[[Record, dict[str, str] | None, str], Plan]   # (first record, mapping, path)
    refines: str | None = None                     # a specialisation of another format wins over it
    container: str | None = None                   # generic formats force how the file is read
    mappable: bool = False                         # takes a column mapping (generic formats always do)


def messages_series(name: str, values: list) -> pl.Series:
    """A list<struct<role, content>> column from Python lists of dicts (built by Arrow: much faster than
    polars' row-wise constructor for nested values)."""
    return pl.Series(name, pa.array(values, type=MESSAGES))


def reject_bad_messages(df: pl.DataFrame, p: Problems, col: str) -> pl.DataFrame:
    """A message list must hold {role, content} objects with both set (an empty list is the caller's call)."""
    e = pl.element()
    bad = pl.col(col).list.eval(e.is_null() | e.struct.field("role").is_null()
                                | e.struct.field("content").is_null()).list.any()
    return p.reject(df, bad, reason=f"malformed {col} messages", column=col,
                    message="a message is null or lacks 'role' or 'content'")


def invalid_rank(rank: pl.Expr) -> pl.Expr:
    """Ranks are whole numbers 1..2^31-1 (read as float64 because sources store 1.0 as well as 1)."""
    return rank.is_not_null() & (~rank.is_finite() | (rank != rank.floor()) | (rank < 1) | (rank > 2**31 - 1))


def has(record: Record, *keys: str) -> bool:
    return all(k in record for k in keys)
