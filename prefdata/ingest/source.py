"""read_source: one source file or folder -> a canonical, validated Arrow table with its row accounting."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl
import pyarrow as pa

from prefdata.errors import FormatError, IngestError
from prefdata.ingest.detect import detect_format
from prefdata.ingest.finalize import finalize
from prefdata.ingest.problems import ITEM, ROW, OnError, Problems
from prefdata.ingest.readers import Carry, container_of, load, peek
from prefdata.ingest.registry import FORMATS
from prefdata.schema import contract


@dataclass
class IngestResult:
    table: pa.Table                         # conformed + validated against prefdata.schema
    kind: Literal["prompts", "responses", "pairs"]
    format: str
    rows_in: int                            # candidate rows (responses/pairs) + unreadable source records
    drops: dict[str, int]                   # rows dropped, by reason
    source: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_kept(self) -> int:
        return self.table.num_rows


def read_source(path: str | Path, format: str | None = None, mapping: dict[str, str] | None = None,
                on_error: OnError = "raise", media_dir: str | Path | None = None,
                carry: list[str] | tuple[str, ...] | None = None) -> IngestResult:
    """Read `path` as `format` (auto-detected from the first records when None; a mapping without a format
    means the generic format of the file's container). on_error="raise" stops at the first bad row with an
    IngestError naming file, row and column; "drop" drops bad rows and counts them by reason.
    `carry` names source columns to keep unchanged beside the canonical ones (every output row gets its
    source record's values); the `prompts` format carries every column it does not read anyway."""
    path = Path(path)
    src = str(path)
    if not path.exists():
        raise IngestError(src, "no such file or folder")
    if format is not None and format not in FORMATS:
        raise FormatError(f"unknown format {format!r}; known formats: {', '.join(FORMATS)}")
    p = Problems(src, on_error, media_dir=Path(media_dir) if media_dir is not None else None)
    container = container_of(path)
    if format is not None and FORMATS[format].container is not None:
        container = _forced_container(path, FORMATS[format].container, container)
    elif mapping and format is None:
        format = "jsonl" if container in ("jsonl", "json") else container
    first = peek(path, container)
    if format is None:
        format = detect_format(first, source=src)
    fmt = FORMATS[format]
    if mapping and fmt.container is None and not fmt.mappable:
        raise FormatError(f"--map applies to the generic formats jsonl, parquet and hf (and prompts), "
                          f"not to {format!r}")
    carry = _carry_names(carry, src)
    if not first:
        raise IngestError(src, "no readable records")
    plan = fmt.plan(first[0], mapping, src)
    for col in plan.required:
        if col not in first[0]:
            raise IngestError(src, f"missing column {col!r} required by format {format!r} "
                                   f"(first record has: {', '.join(sorted(first[0]))})", row=1, column=col)
    loaded = load(path, container, plan.schema, p, Carry(carry, plan.carry_rest))
    df = pl.from_arrow(loaded.table)
    assert isinstance(df, pl.DataFrame)
    df = df.with_columns(pl.Series(ROW, loaded.rows, dtype=pl.Int64))
    kept = df.select(ROW, *loaded.carried) if loaded.carried else None
    df = plan.transform(df, p)
    carried, not_carried = [], {}
    if kept is not None:
        carried, not_carried = _carried_columns(df, kept, plan, carry, src)
        # carried values are per source record: the join repeats them on every row made from that record
        df = df.join(kept.select(ROW, *carried), on=ROW, how="left", maintain_order="left")
    table = finalize(df, plan, p, carried=carried)
    drops = dict(p.drops)
    if p.rows_in != table.num_rows + sum(drops.values()):   # every row is kept or dropped with a reason
        raise RuntimeError(f"row accounting broken for {src}: in {p.rows_in}, kept {table.num_rows}, drops {drops}")
    info = {"container": loaded.container, "records": len(loaded.rows), **plan.info, **p.info}
    if kept is not None:
        info["carried"] = carried
    if not_carried:
        info["not_carried"] = not_carried
    return IngestResult(table=table, kind=plan.kind, format=format, rows_in=p.rows_in, drops=drops, source=src,
                        info=info)


def _carry_names(carry, src: str) -> tuple[str, ...]:
    if carry is None:
        return ()
    if isinstance(carry, str) or not all(isinstance(c, str) and c for c in carry):
        raise IngestError(src, f"carry must be a list of column names, got {carry!r}")
    return tuple(dict.fromkeys(carry))


def _carried_columns(out: pl.DataFrame, kept: pl.DataFrame, plan, named: tuple[str, ...], src: str
                     ) -> tuple[list[str], dict[str, str]]:
    """Which loaded source columns join the output. A source column that is already the canonical column of
    the same name is there anyway; one whose name a canonical column holds (mapped from another source
    column) would overwrite it: an error when the user named it in `carry`, else left out and listed in
    info["not_carried"] (so nothing disappears without a trace)."""
    reserved = {c for c in out.columns if c not in (ROW, ITEM)} | {f.name for f, _, _ in contract(plan.kind)}
    carried, not_carried = [], {}
    for c in kept.columns:
        if c == ROW:
            continue
        if c not in reserved:
            carried.append(c)
            continue
        origin = plan.origin.get(c)
        if origin == c:
            continue
        why = f"the canonical column {c!r}" + (f" comes from source column {origin!r}" if origin else " is made "
                                                                                       "by the format")
        if c in named:
            raise IngestError(src, f"cannot carry column {c!r}: {why}", column=c)
        not_carried[c] = why
    return carried, not_carried


def _forced_container(path: Path, wanted: str, found: str) -> str:
    if wanted == "jsonl" and found in ("jsonl", "json"):
        return found
    if wanted == "jsonl" and found == "parquet":
        raise FormatError(f"{path}: --format jsonl but the file is parquet; use --format parquet")
    if wanted == "hf" and not path.is_dir():
        raise FormatError(f"{path}: --format hf needs a datasets folder (save_to_disk output or data files)")
    if wanted == "parquet" and path.is_dir():
        raise FormatError(f"{path}: --format parquet needs a parquet file, got a folder; use --format hf")
    return wanted
