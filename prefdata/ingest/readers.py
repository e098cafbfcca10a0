"""Reading source records into an Arrow table of the fields a format needs, keeping each row's source
position so errors can name it.

Containers: JSON Lines (any file that is not parquet; a file starting with "[" is read as one JSON array),
parquet, and Hugging Face `datasets` folders (`save_to_disk` output, or a folder of data files that
`load_dataset` reads offline). JSON Lines take a fast path through pyarrow's JSON reader with the format's
explicit schema; only when that fails (bad JSON, a value of the wrong type) are lines parsed one by one in
Python to find and name the offending line and column.

Carried columns (`carry`: named source columns; `carry_rest`: every source column the format does not read)
come back after the format's fields with the types the file gives them (parquet/datasets) or that are
inferred from the values (JSON); a JSON value whose type disagrees with the rest of its column is a
mistyped-column error naming its line."""
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
    table: pa.Table          # the schema's fields in order, then the carried columns
    rows: list[int]          # source position of each table row (1-based)
    container: Container
    carried: tuple[str, ...] = ()   # names of the carried columns (after the schema's fields)


@dataclass(frozen=True)
class Carry:
    """Source columns kept as they are, besides the fields a format reads."""
    names: tuple[str, ...] = ()      # named columns (an unknown name is an IngestError)
    rest: bool = False               # also every other column the format does not read

    def __bool__(self) -> bool:
        return bool(self.names) or self.rest

    def pick(self, available: list[str], schema: pa.Schema, path: Path) -> list[str]:
        """The carried column names among `available` (source order for `rest`, named ones first)."""
        missing = [c for c in self.names if c not in available]
        if missing:
            raise IngestError(str(path), f"carry names column(s) {missing} that the source does not have "
                                         f"(it has: {', '.join(available) or 'no columns'})", column=missing[0])
        out = list(self.names)
        if self.rest:
            out += [c for c in available if c not in schema.names and c not in out]
        return out


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

def load(path: Path, container: Container, schema: pa.Schema, problems: Problems, carry: Carry = Carry()) -> Loaded:
    if container == "jsonl":
        return _load_jsonl(path, schema, problems, carry)
    if container == "json":
        objs = _load_json_array(path)
        return _from_objects(objs, list(range(1, len(objs) + 1)), schema, problems, container, carry, path)
    if container == "parquet":
        table = _read_parquet(path, schema, carry)
    else:
        table = _hf_dataset(path).with_format("arrow")[:]
    carried = carry.pick(table.column_names, schema, path) if carry else []
    return _from_arrow(table, schema, problems, container, carried)


def _load_jsonl(path: Path, schema: pa.Schema, problems: Problems, carry: Carry = Carry()) -> Loaded:
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
    # the Arrow reader is handed objects only: a top-level `null` line crashes it (segfault in pyarrow's JSON
    # reader when it is the first line) or becomes an all-null row; such lines take the slow path, which names them
    if good and all(ln.lstrip()[:1] == b"{" for _, ln in good):
        longest = max(len(ln) for _, ln in good)
        try:
            table = pj.read_json(
                io.BytesIO(body),
                read_options=pj.ReadOptions(block_size=max(1 << 22, 2 * longest + 2)),
                # carried columns: types inferred by the reader (a conflict within the file takes the slow path)
                parse_options=pj.ParseOptions(explicit_schema=schema,
                                              unexpected_field_behavior="infer" if carry else "ignore"))
            if carry:
                table.validate(full=True)   # inferred nested nulls can come out malformed: then the slow path
            if table.num_rows == len(good):
                carried = carry.pick(table.column_names, schema, path) if carry else []
                problems.rows_in += len(rows)
                extra = [c for c in carried if c not in schema.names]
                return Loaded(table.select(schema.names + extra).combine_chunks(), rows, "jsonl", tuple(carried))
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
    return _from_objects(objs, kept, schema, problems, "jsonl", carry, path)


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


def _read_parquet(path: Path, schema: pa.Schema, carry: Carry = Carry()) -> pa.Table:
    pf = _parquet_file(path)
    names = pf.schema_arrow.names
    present = [n for n in schema.names if n in names]
    if carry:
        present += [c for c in carry.pick(names, schema, path) if c not in present]
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

def _from_arrow(table: pa.Table, schema: pa.Schema, problems: Problems, container: Container,
                carried: list[str] = ()) -> Loaded:
    """Columns already typed by the file: cheap casts where they cannot change meaning (int -> float,
    large_string -> string); anything else is checked value by value so a wrong type names its row.
    Carried columns keep the file's types."""
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
    keep = [i for i in range(n) if i not in bad_rows] if bad_rows else range(n)   # no per-row list when all are good
    problems.rows_in += len(keep)
    if bad_rows:
        idx = pa.array(keep, pa.int64())
        cols = {k: (v.take(idx) if isinstance(v, pa.ChunkedArray | pa.Array) else [v[i] for i in keep])
                for k, v in cols.items()}
    arrays = [v if isinstance(v, pa.ChunkedArray | pa.Array) else pa.array(v, f.type)
              for f, v in zip(schema, cols.values(), strict=True)]
    out = pa.Table.from_arrays(arrays, schema=schema)
    for c in carried:
        if c in schema.names:      # a field the format reads is carried as read (e.g. a mapped column)
            continue
        col = table.column(c)
        out = out.append_column(c, col.take(pa.array(keep, pa.int64())) if bad_rows else col)
    return Loaded(out.combine_chunks(), [rows[i] for i in keep] if bad_rows else rows, container, tuple(carried))


def _from_objects(objs: list[dict], rows: list[int], schema: pa.Schema, problems: Problems,
                  container: Container, carry: Carry = Carry(), src: Path | None = None) -> Loaded:
    bad: dict[int, tuple[str, str, str, str]] = {}
    for f in schema:
        values = [o.get(f.name) for o in objs]
        for idx, path, expected, got in _mismatches(values, f.type, f.name):
            bad.setdefault(idx, (path, expected, got, f.name))
    carried: list[str] = []
    if carry:
        seen = list(dict.fromkeys(k for o in objs for k in o))   # every key, in order of first appearance
        carried = carry.pick(seen, schema, src or Path("input"))
        for c in carried:
            if c in schema.names:
                continue
            for idx, expected, got in _carried_mismatches([o.get(c) for o in objs]):
                bad.setdefault(idx, (c, expected, got, c))
    for idx in sorted(bad):
        path, expected, got, top = bad[idx]
        problems.record(rows[idx], f"expected {expected}, got {got}", reason=f"mistyped {top}", column=path)
    keep = [i for i in range(len(objs)) if i not in bad]
    problems.rows_in += len(keep)
    arrays = [pa.array([objs[i].get(f.name) for i in keep], f.type) for f in schema]
    out = pa.Table.from_arrays(arrays, schema=schema)
    for c in carried:
        if c in schema.names:
            continue
        values = [objs[i].get(c) for i in keep]
        try:
            out = out.append_column(c, pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:   # nested values of mixed types: not one Arrow type
            raise IngestError(str(src), f"carried column {c!r} has values of mixed types that do not form one "
                                        f"column type ({e})", column=c) from None
    return Loaded(out, [rows[i] for i in keep], container, tuple(carried))


def _carried_mismatches(values: list[Any]) -> Iterator[tuple[int, str, str]]:
    """(row index, expected, got) for values whose JSON kind differs from the column's first non-null value
    (numbers of both int and float kind are one kind)."""
    kinds = [_json_kind(v) for v in values]
    first = next((k for k in kinds if k != "null"), None)
    if first is None:
        return
    for i, (k, v) in enumerate(zip(kinds, values, strict=True)):
        if k not in ("null", first):
            yield i, f"{_article(first)} (as in the column's first value)", _describe(v)


def _article(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


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
