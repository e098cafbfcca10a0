"""Export one catalog version to files other tools read: parquet, jsonl, or an HF `datasets` directory.

Each export writes `<stem>.lineage.json` (hf: `prefdata_lineage.json` inside the directory) with the
version's lineage, so a file that leaves the catalog still says where it came from — made portable first
(an ingest source as its file name and sha256, any other absolute local path elided to `…/<name>`). Files are written
under a temporary name and renamed, so an interrupted export never leaves a half file under the real name.
Pairs tables export unchanged: `prompt`, `chosen`, `rejected` are plain string columns, which is TRL's
DPOTrainer format; extra columns are carried.

A table with a `split` column (the `split` builder step: `train` / `test` by prompt) exports to hf as a
`datasets.DatasetDict` with one split per value (`load_from_disk(dir)["train"]`, what TRL users load); the
column itself is left out, since the split name carries it. parquet and jsonl keep the column."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from catalog.errors import ExportError
from catalog.names import parse_ref

if TYPE_CHECKING:
    from catalog.core import Catalog

_SPLIT_NAME = re.compile(r"\w+(\.\w+)*")       # datasets' own rule for split names

FORMATS = ("parquet", "jsonl", "hf")
BATCH_ROWS = 65_536
TRL_COLUMNS = ("prompt", "chosen", "rejected")
SPLIT_COLUMN = "split"
SPLIT_ORDER = ("train", "test")          # first in the DatasetDict; any other value follows, sorted


def _batches(ds, batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    for batch in ds.to_batches(batch_size=batch_rows):
        if batch.num_rows:
            yield batch


def _claim(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise ExportError(f"{path} already exists (pass overwrite=True to replace it)")


def _write_parquet(ds, out_dir: Path, stem: str, shard_rows: int | None, overwrite: bool) -> list[Path]:
    rows = ds.count_rows()
    n_shards = 1 if shard_rows is None else max(1, math.ceil(rows / shard_rows))
    paths = [out_dir / f"{stem}.parquet"] if shard_rows is None else \
        [out_dir / f"{stem}-{i:05d}-of-{n_shards:05d}.parquet" for i in range(n_shards)]
    for p in paths:
        _claim(p, overwrite)
    per_shard = rows if shard_rows is None else shard_rows
    batches = _batches(ds)
    pending: pa.RecordBatch | None = None
    from catalog.writer import plain_schema

    schema = plain_schema(ds.schema)
    for path in paths:
        tmp = path.with_name(f".{path.name}.tmp")
        with pq.ParquetWriter(tmp, schema) as writer:
            left = per_shard
            while left > 0:
                if pending is None:
                    pending = next(batches, None)
                    if pending is None:
                        break
                take = pending.slice(0, left)
                writer.write_batch(take)
                left -= take.num_rows
                pending = pending.slice(take.num_rows) if take.num_rows < pending.num_rows else None
        os.replace(tmp, path)
    return paths


def _write_jsonl(ds, out_dir: Path, stem: str, overwrite: bool) -> tuple[list[Path], dict[str, int]]:
    import polars as pl

    path = out_dir / f"{stem}.jsonl"
    _claim(path, overwrite)
    tmp = path.with_name(f".{path.name}.tmp")
    float_cols = [f.name for f in ds.schema if pa.types.is_floating(f.type)]
    nan_counts = dict.fromkeys(float_cols, 0)
    with open(tmp, "wb") as fh:
        for batch in _batches(ds):
            for c in float_cols:  # JSON has no NaN: it is written as null, and counted so nothing is silent
                nan_counts[c] += int(pc.sum(pc.is_nan(batch.column(c))).as_py() or 0)
            pl.from_arrow(batch).write_ndjson(fh)
    os.replace(tmp, path)
    return [path], {c: n for c, n in nan_counts.items() if n}


def split_tables(table: pa.Table) -> dict[str, pa.Table]:
    """{split value: its rows without the `split` column}, train then test then any other value. Every row
    needs a split name datasets accepts (letters, digits, `_`, `.`), else ExportError naming the column."""
    col = table.column(SPLIT_COLUMN)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise ExportError(f"column {SPLIT_COLUMN!r} is {col.type}, expected string (train / test)")
    nulls = col.null_count
    if nulls:
        raise ExportError(f"column {SPLIT_COLUMN!r} is null in {nulls} row(s); every row needs a split (train / test)")
    names = pc.unique(col).to_pylist()
    bad = sorted(n for n in names if not _SPLIT_NAME.fullmatch(n))
    if bad:
        raise ExportError(f"column {SPLIT_COLUMN!r} holds {bad[0]!r}, not a valid split name (letters, digits, _ .)")
    ordered = [n for n in SPLIT_ORDER if n in names] + sorted(n for n in names if n not in SPLIT_ORDER)
    rest = table.drop_columns([SPLIT_COLUMN])
    return {n: rest.filter(pc.equal(col, n)) for n in ordered}


def _write_hf(ds, out_dir: Path, overwrite: bool) -> tuple[list[Path], dict[str, int] | None]:
    import datasets
    from datasets.table import InMemoryTable

    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise ExportError(f"{out_dir} exists and is not empty (pass overwrite=True to replace it)")
    quiet = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        table = ds.to_table()
        if SPLIT_COLUMN in table.column_names:
            parts = split_tables(table)
            del table
            datasets.DatasetDict({n: datasets.Dataset(InMemoryTable(t)) for n, t in parts.items()}) \
                .save_to_disk(str(tmp))
            splits = {n: t.num_rows for n, t in parts.items()}
        else:
            datasets.Dataset(InMemoryTable(table)).save_to_disk(str(tmp))
            splits = None
    finally:
        if not quiet:
            datasets.enable_progress_bars()
    # swap in only once the new directory is complete
    if out_dir.is_dir():
        shutil.rmtree(out_dir)
    elif out_dir.exists():
        out_dir.unlink()
    os.replace(tmp, out_dir)
    return [out_dir], splits


def export(cat: Catalog, ref: str, to: str, out_dir: Path, *, shard_rows: int | None = None,
           overwrite: bool = False) -> dict[str, Any]:
    if to not in FORMATS:
        raise ExportError(f"unknown export format {to!r}; expected one of {', '.join(FORMATS)}")
    if shard_rows is not None and (isinstance(shard_rows, bool) or not isinstance(shard_rows, int) or shard_rows < 1):
        raise ExportError(f"shard_rows must be a positive integer, got {shard_rows!r}")
    if shard_rows is not None and to != "parquet":
        raise ExportError("shard_rows applies to parquet exports only")
    name, version = parse_ref(ref)
    ds = cat.dataset(name, version)
    resolved = f"{name}@{ds.version}"
    stem = f"{name}-v{ds.version}"
    out_dir.mkdir(parents=True, exist_ok=True) if to != "hf" else out_dir.parent.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {}
    if to == "parquet":
        paths = _write_parquet(ds, out_dir, stem, shard_rows, overwrite)
        lineage_path = out_dir / f"{stem}.lineage.json"
    elif to == "jsonl":
        paths, nan_as_null = _write_jsonl(ds, out_dir, stem, overwrite)
        extra["nan_written_as_null"] = nan_as_null
        lineage_path = out_dir / f"{stem}.lineage.json"
    else:
        paths, splits = _write_hf(ds, out_dir, overwrite)
        if splits is not None:
            extra["splits"] = splits
        lineage_path = out_dir / "prefdata_lineage.json"
    from catalog.portable import portable_lineage

    # the lineage file travels with the data: no absolute local paths in it (catalog/portable.py)
    rec = portable_lineage(cat.lineage(name, ds.version) or {})
    tmp = lineage_path.with_name(f".{lineage_path.name}.tmp")
    tmp.write_text(json.dumps(rec, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, lineage_path)
    types = {f.name: f.type for f in ds.schema}
    trl_ready = all(c in types and (pa.types.is_string(types[c]) or pa.types.is_large_string(types[c]))
                    for c in TRL_COLUMNS)
    return {"ref": resolved, "format": to, "paths": [str(p) for p in paths], "rows": ds.count_rows(),
            "lineage_path": str(lineage_path), "trl_dpo_columns": trl_ready, **extra}
