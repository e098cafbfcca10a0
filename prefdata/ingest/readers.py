"""Reading source records into an Arrow table of the fields a format needs, keeping each row's source
position so errors can name it.

Containers: JSON Lines (any file that is not parquet; a file starting with "[" is read as one JSON array),
parquet, and Hugging Face `datasets` folders (`save_to_disk` output, or a folder of data files that
`load_dataset` reads offline). JSON Lines take a fast path through pyarrow's JSON reader with the format's
explicit schema; only when that fails (bad JSON, a value of the wrong type) are lines parsed one by one in
Python to find and name the offending line and column."""
from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.json as pj
import pyarrow.parquet as pq

from prefdata.errors import IngestError
from prefdata.ingest.problems import Problems

Container = Literal["jsonl", "json", "parquet", "hf"]
_BOM = b"\xef\xbb\xbf"
PARQUET_SUFFIXES = {".parquet", ".pq"}


@dataclass
class Loaded:
    table: pa.Table          # exactly the schema's fields, in order
    rows: list[int]          # source position of each table row (1-based)
    container: Container


def container_of(path: Path) -> Container:
    if path.is_dir():
        return "hf"
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return "parquet"
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(_BOM).lstrip()
    return "json" if head.startswith(b"[") else "jsonl"


# ---------------------------------------------------------------- first records (format detection)

def peek(path: Path, container: Container, n: int = 5) -> list[dict[str, Any]]:
    """Up to n readable records from the start of the source (unreadable lines are skipped here; the full
    read reports them)."""
    if container == "jsonl":
        return list(_peek_jsonl(path, n))
    if container == "json":
        return [o for o in _load_json_array(path)[:n] if isinstance(o, dict)]
    if container == "parquet":
        pf = _parquet_file(path)
        for batch in pf.iter_batches(batch_size=n):
            return batch.to_pylist()
        return []
    ds = _hf_dataset(path)
    return ds.select(range(min(n, len(ds)))).to_list()


def _peek_jsonl(path: Path, n: int) -> Iterator[dict[str, Any]]:
    found = 0
    with open(path, "rb") as f:
        for i, raw in enumerate(f):
            line = raw.lstrip(_BOM) if i == 0 else raw
            if not line.strip():
                continue
            try:
                obj = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                continue
            if isinstance(obj, dict):
                yield obj
                found += 1
                if found >= n:
                    return


# ---------------------------------------------------------------- full read

def load(path: Path, container: Container, schema: pa.Schema, problems: Problems) -> Loaded:
    if container == "jsonl":
        return _load_jsonl(path, schema, problems)
    if container == "json":
        objs = _load_json_array(path)
        return _from_objects(objs, list(range(1, len(objs) + 1)), schema, problems, container)
    if container == "parquet":
        table = _read_parquet(path, schema)
    else:
        table = _hf_dataset(path).with_format("arrow")[:]
    return _from_arrow(table, schema, problems, container)


def _load_jsonl(path: Path, schema: pa.Schema, problems: Problems) -> Loaded:
    data = path.read_bytes()
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    lines = data.split(b"\n")
    if lines and not lines[-1].strip():
        lines.pop()
    bad_utf8: set[int] = set()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        # report the first bad line exactly; in drop mode find all of them (only on this error path)
        line_start = data.rfind(b"\n", 0, e.start) + 1
        lineno = data.count(b"\n", 0, e.start) + 1
        problems.record(lineno, f"invalid UTF-8 (byte 0x{data[e.start]:02x} at byte {e.start - line_start + 1} "
                                "of the line)", reason="bad utf-8")
        for i, ln in enumerate(lines):
            if i + 1 == lineno:
                bad_utf8.add(i)
                continue
            try:
                ln.decode("utf-8")
            except UnicodeDecodeError:
                problems.record(i + 1, "invalid UTF-8", reason="bad utf-8")
                bad_utf8.add(i)
    good = [(i + 1, ln) for i, ln in enumerate(lines) if i not in bad_utf8 and ln.strip()]
    rows = [n for n, _ in good]
    body = b"\n".join(ln for _, ln in good)
    if good:
        longest = max(len(ln) for _, ln in good)
        try:
            table = pj.read_json(
                io.BytesIO(body),
                read_options=pj.ReadOptions(block_size=max(1 << 22, 2 * longest + 2)),
                parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"))
            if table.num_rows == len(good):
                problems.rows_in += len(rows)
                return Loaded(table.select(schema.names).combine_chunks(), rows, "jsonl")
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            pass  # slow path below names the line and column
    objs, kept = [], []
    for lineno, ln in good:
        try:
            obj = json.loads(ln)
        except ValueError as e:
            problems.record(lineno, f"invalid JSON: {getattr(e, 'msg', e)} (char {getattr(e, 'pos', '?')})",
                            reason="invalid json")
            continue
        if not isinstance(obj, dict):
            problems.record(lineno, f"expected a JSON object per line, got {_json_kind(obj)}", reason="invalid json")
            continue
        objs.append(obj)
        kept.append(lineno)
    return _from_objects(objs, kept, schema, problems, "jsonl")


def _load_json_array(path: Path) -> list[Any]:
    try:
        data = json.loads(path.read_bytes().lstrip(_BOM).decode("utf-8"))
    except UnicodeDecodeError as e:
        raise IngestError(str(path), f"invalid UTF-8 at byte {e.start}") from None
    except ValueError as e:
        raise IngestError(str(path), f"invalid JSON: {e}") from None
    if not isinstance(data, list):
        raise IngestError(str(path), f"expected a JSON array of objects, got {_json_kind(data)}")
    return data


def _read_parquet(path: Path, schema: pa.Schema) -> pa.Table:
    pf = _parquet_file(path)
    present = [n for n in schema.names if n in pf.schema_arrow.names]
    return pf.read(columns=present)


def _parquet_file(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise IngestError(str(path), f"not a readable parquet file: {e}") from None


def _hf_dataset(path: Path):
    import datasets

    if (path / "dataset_dict.json").exists():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise IngestError(str(path), f"folder holds several splits {splits}; pass one split's folder, "
                                     f"e.g. {path / splits[0]}" if splits else "folder holds no split")
    try:
        if (path / "state.json").exists():
            ds = datasets.load_from_disk(str(path))
        else:
            ds = datasets.load_dataset(str(path), split="train")
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as e:
        raise IngestError(str(path), f"not a readable datasets folder: {e}") from None
    return ds


# ---------------------------------------------------------------- typing: Arrow columns and Python values

def _from_arrow(table: pa.Table, schema: pa.Schema, problems: Problems, container: Container) -> Loaded:
    """Columns already typed by the file: cheap casts where they cannot change meaning (int -> float,
    large_string -> string); anything else is checked value by value so a wrong type names its row."""
    n = table.num_rows
    rows = list(range(1, n + 1))
    cols, bad_rows = {}, set()
    for f in schema:
        if f.name not in table.column_names:
            cols[f.name] = pa.nulls(n, f.type)
            continue
        col = table.column(f.name)
        if _cheap_cast(col.type, f.type):
            cols[f.name] = col.cast(f.type)
            continue
        values = col.to_pylist()
        for idx, path, expected, got in _mismatches(values, f.type, f.name):
            problems.record(rows[idx], f"expected {expected}, got {got}", reason=f"mistyped {f.name}", column=path)
            bad_rows.add(idx)
        cols[f.name] = values
    keep = [i for i in range(n) if i not in bad_rows]
    problems.rows_in += len(keep)
    if bad_rows:
        idx = pa.array(keep, pa.int64())
        cols = {k: (v.take(idx) if isinstance(v, pa.ChunkedArray | pa.Array) else [v[i] for i in keep])
                for k, v in cols.items()}
    arrays = [v if isinstance(v, pa.ChunkedArray | pa.Array) else pa.array(v, f.type)
              for f, v in zip(schema, cols.values(), strict=True)]
    return Loaded(pa.Table.from_arrays(arrays, schema=schema).combine_chunks(), [rows[i] for i in keep], container)


def _from_objects(objs: list[dict], rows: list[int], schema: pa.Schema, problems: Problems,
                  container: Container) -> Loaded:
    bad: dict[int, tuple[str, str, str, str]] = {}
    for f in schema:
        values = [o.get(f.name) for o in objs]
        for idx, path, expected, got in _mismatches(values, f.type, f.name):
            bad.setdefault(idx, (path, expected, got, f.name))
    for idx in sorted(bad):
        path, expected, got, top = bad[idx]
        problems.record(rows[idx], f"expected {expected}, got {got}", reason=f"mistyped {top}", column=path)
    keep = [i for i in range(len(objs)) if i not in bad]
    problems.rows_in += len(keep)
    arrays = [pa.array([objs[i].get(f.name) for i in keep], f.type) for f in schema]
    return Loaded(pa.Table.from_arrays(arrays, schema=schema), [rows[i] for i in keep], container)


def _cheap_cast(actual: pa.DataType, target: pa.DataType) -> bool:
    if actual.equals(target):
        return True
    if pa.types.is_null(actual):
        return True
    if pa.types.is_string(target):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual)
    if pa.types.is_binary(target):
        return pa.types.is_binary(actual) or pa.types.is_large_binary(actual)
    if pa.types.is_floating(target):
        return pa.types.is_integer(actual) or pa.types.is_floating(actual)
    return False


def _mismatches(values: list[Any], typ: pa.DataType, name: str) -> Iterator[tuple[int, str, str, str]]:
    """(row index, column path, expected, got) for each value that does not fit `typ` (first problem per row)."""
    for i, v in enumerate(values):
        hit = _first_mismatch(v, typ, name)
        if hit is not None:
            yield (i, *hit)


def _first_mismatch(v: Any, typ: pa.DataType, path: str) -> tuple[str, str, str] | None:
    if v is None:
        return None
    if pa.types.is_string(typ):
        return None if isinstance(v, str) else (path, "a string", _describe(v))
    if pa.types.is_floating(typ):
        ok = isinstance(v, int | float) and not isinstance(v, bool)
        return None if ok else (path, "a number", _describe(v))
    if pa.types.is_boolean(typ):
        return None if isinstance(v, bool) else (path, "true/false", _describe(v))
    if pa.types.is_binary(typ):
        return None if isinstance(v, bytes | bytearray) else (path, "bytes", _describe(v))
    if pa.types.is_list(typ):
        if not isinstance(v, list | tuple):
            return (path, "a list", _describe(v))
        for j, item in enumerate(v):
            hit = _first_mismatch(item, typ.value_type, f"{path}[{j + 1}]")
            if hit:
                return hit
        return None
    if pa.types.is_struct(typ):
        if not isinstance(v, dict):
            return (path, "an object", _describe(v))
        for k in range(typ.num_fields):
            fld = typ.field(k)
            hit = _first_mismatch(v.get(fld.name), fld.type, f"{path}.{fld.name}")
            if hit:
                return hit
        return None
    raise TypeError(f"read schema uses unsupported type {typ}")  # a bug in a format's schema, not user input


def _describe(v: Any) -> str:
    kind = _json_kind(v)
    text = repr(v) if not isinstance(v, bytes | bytearray) else f"{len(v)} bytes"
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{kind} {text}" if kind not in ("null",) else kind


def _json_kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number" if not (isinstance(v, float) and not math.isfinite(v)) else "non-finite number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list | tuple):
        return "list"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__
