"""Canonical JSON and the content hash of a table.

Content hash: sha256 over a canonical serialization of the rows, order-sensitive, independent of how the
table happens to be laid out in memory (chunking, slicing offsets, whether an all-valid column carries a
validity bitmap, string vs large_string, list vs large_list, dictionary encoding). So the hash of a table
equals the hash of the same rows read back from Lance, and it is the same on every run and machine.

The rows are cut into fixed blocks of BLOCK_ROWS by absolute row index; each block gets a digest and the
table hash is sha256 over (format tag, schema, row count, block digests). Appending rows therefore only
re-hashes the last partial block of the previous version plus the new rows: the catalog stores the full
block digests with each version, which keeps `append` O(new rows) instead of O(dataset).

The byte stream of one block (format "prefdata-content-v1", unchanged since the first catalog; docs/catalog.md
has it in full and tests/catalog/test_content_hash_format.py pins the digest of a fixed table): for each
column in schema order, a part b"c" + its name, then the parts of its values; a part is a one-byte tag, its
length as 8 bytes little-endian, and its bytes. Values: b"n" row count; b"v" validity bits (packbits, only
when there are nulls); b"x" numbers little-endian (nulls as 0); b"b" booleans (packbits); temporal values as
their int32/int64; strings and binaries as b"o" lengths (int64) then b"d" the bytes; b"f" fixed-size binary
bytes of the valid values; b"l" list lengths then
the flattened values of the valid lists; b"s" + field name then the field, per struct field; b"j" canonical
JSON for anything else. The table digest: sha256 over b"F" + FORMAT, b"S" + the schema string, b"R" + rows
(8 bytes LE), then the 32-byte block digests in order.

Speed: blocks are independent, so they are hashed on a thread pool (sha256 and the numpy/Arrow work release
the GIL; sha256 runs at ~1.5-2 GB/s a core with the CPU's SHA extensions), and a table's result is kept
while the table lives (`table_content`), so the build's check against stored versions and the write that
follows hash a table once."""
from __future__ import annotations

import hashlib
import json
import os
import weakref
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FORMAT = b"prefdata-content-v1"
BLOCK_ROWS = 65_536


# ---------------------------------------------------------------------------------------------- JSON
def _to_jsonable(obj: Any) -> Any:
    # pydantic models (recipe step configs) serialize through their own JSON mode
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    raise TypeError(f"{type(obj).__name__} is not JSON-serializable")


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 kept, NaN refused: equal configs give equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                      default=_to_jsonable)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------------ schema / types
def type_string(t: pa.DataType) -> str:
    """Canonical type name: large/small and view variants collapse, list child names are ignored."""
    if pa.types.is_dictionary(t):
        return type_string(t.value_type)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return "binary"
    if pa.types.is_fixed_size_list(t):
        return f"fixed_size_list<{type_string(t.value_type)},{t.list_size}>"
    if pa.types.is_map(t):
        return f"map<{type_string(t.key_type)},{type_string(t.item_type)}>"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t) \
            or pa.types.is_large_list_view(t):
        return f"list<{type_string(t.value_type)}>"
    if pa.types.is_struct(t):
        return "struct<" + ",".join(f"{f.name}:{type_string(f.type)}" for f in t) + ">"
    return str(t)


def schema_string(schema: pa.Schema) -> str:
    return ",".join(f"{json.dumps(f.name, ensure_ascii=False)}:{type_string(f.type)}" for f in schema)


# ----------------------------------------------------------------------------------- array bytes
class _Feed:
    """Writes length-prefixed, tagged parts into a hash so no two different inputs share a byte stream."""

    def __init__(self, h):
        self.h = h

    def part(self, tag: bytes, data: bytes | memoryview) -> None:
        self.h.update(tag + len(data).to_bytes(8, "little"))
        self.h.update(data)


def _valid_mask(arr: pa.Array) -> np.ndarray:
    return pc.is_valid(arr).to_numpy(zero_copy_only=False)


def _le(values: np.ndarray) -> bytes:
    return np.ascontiguousarray(values).astype(values.dtype.newbyteorder("<"), copy=False).tobytes()


def _feed_array(feed: _Feed, arr: pa.Array) -> None:
    t = arr.type
    if pa.types.is_dictionary(t):
        arr, t = arr.dictionary_decode(), t.value_type
    n = len(arr)
    feed.part(b"n", n.to_bytes(8, "little"))
    if arr.null_count:
        feed.part(b"v", np.packbits(_valid_mask(arr)).tobytes())
    if pa.types.is_null(t):
        return
    if pa.types.is_string_view(t) or pa.types.is_binary_view(t):
        arr = arr.cast(pa.large_string() if pa.types.is_string_view(t) else pa.large_binary())
        t = arr.type
    if pa.types.is_boolean(t):
        feed.part(b"b", np.packbits(pc.fill_null(arr, False).to_numpy(zero_copy_only=False)).tobytes())
    elif pa.types.is_integer(t) or pa.types.is_floating(t):
        filled = pc.fill_null(arr, 0) if arr.null_count else arr
        feed.part(b"x", _le(filled.to_numpy(zero_copy_only=False)))
    elif pa.types.is_temporal(t) and not pa.types.is_interval(t):
        # dates/times/timestamps/durations are integers with a unit that is part of the type string
        width = pa.int32() if t.bit_width == 32 else pa.int64()
        _feed_array(feed, arr.view(width))
    elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) \
            or pa.types.is_large_binary(t):
        _feed_binary(feed, arr)
    elif pa.types.is_fixed_size_binary(t):
        filled = arr.filter(pc.is_valid(arr)) if arr.null_count else arr
        width = t.byte_width
        buf = filled.buffers()[1]
        feed.part(b"f", memoryview(buf)[filled.offset * width:(filled.offset + len(filled)) * width]
                  if buf is not None else b"")
    elif (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) \
            and not pa.types.is_map(t):
        # values behind null slots are unspecified in Arrow: hash only the valid lists
        valid = arr.filter(pc.is_valid(arr)) if arr.null_count else arr
        lengths = pc.list_value_length(valid).to_numpy(zero_copy_only=False).astype(np.int64)
        feed.part(b"l", _le(lengths))
        _feed_array(feed, valid.flatten())
    elif pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        _feed_array(feed, arr.cast(pa.large_list(t.value_field)))
    elif pa.types.is_struct(t):
        valid = arr.filter(pc.is_valid(arr)) if arr.null_count else arr
        for i in range(t.num_fields):
            feed.part(b"s", t.field(i).name.encode("utf-8"))
            _feed_array(feed, valid.field(i))
    else:
        # decimals, maps, extension types: rare in preference data; canonical JSON of the Python values
        feed.part(b"j", json.dumps(arr.to_pylist(), default=str, ensure_ascii=False, sort_keys=True)
                  .encode("utf-8"))


def _feed_binary(feed: _Feed, arr: pa.Array) -> None:
    filled = pc.fill_null(arr, b"" if pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)
                          else "") if arr.null_count else arr
    bufs = filled.buffers()
    off_dtype = np.int64 if pa.types.is_large_string(filled.type) or pa.types.is_large_binary(filled.type) \
        else np.int32
    n = len(filled)
    offsets = np.frombuffer(bufs[1], dtype=off_dtype)[filled.offset:filled.offset + n + 1] \
        if bufs[1] is not None and n else np.zeros(1, dtype=off_dtype)
    feed.part(b"o", _le(np.diff(offsets).astype(np.int64)))
    data = bufs[2]
    feed.part(b"d", memoryview(data)[int(offsets[0]):int(offsets[-1])] if data is not None else b"")


# ------------------------------------------------------------------------------------ block hashing
def _block_digest(block: pa.Table) -> bytes:
    h = hashlib.sha256()
    feed = _Feed(h)
    for name, col in zip(block.column_names, block.columns, strict=True):
        feed.part(b"c", name.encode("utf-8"))
        arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        _feed_array(feed, arr)
    return h.digest()


def block_digests(table: pa.Table, start_row: int = 0) -> list[bytes]:
    """Digests of the table cut at multiples of BLOCK_ROWS (the last one may be partial).

    `start_row` is the absolute index of the table's first row; it must be a block boundary."""
    if start_row % BLOCK_ROWS:
        raise ValueError(f"start_row {start_row} is not a multiple of {BLOCK_ROWS}")
    starts = range(0, table.num_rows, BLOCK_ROWS)
    workers = min(len(starts), os.cpu_count() or 1)
    if workers <= 1:
        return [_block_digest(table.slice(i, BLOCK_ROWS)) for i in starts]
    with ThreadPoolExecutor(workers, thread_name_prefix="prefdata-hash") as pool:
        return list(pool.map(lambda i: _block_digest(table.slice(i, BLOCK_ROWS)), starts))


def combine(schema: pa.Schema, num_rows: int, digests: Sequence[bytes]) -> str:
    expected = -(-num_rows // BLOCK_ROWS)
    if len(digests) != expected:
        raise ValueError(f"{len(digests)} block digests for {num_rows} rows (expected {expected})")
    h = hashlib.sha256()
    feed = _Feed(h)
    feed.part(b"F", FORMAT)
    feed.part(b"S", schema_string(schema).encode("utf-8"))
    feed.part(b"R", num_rows.to_bytes(8, "little"))
    for d in digests:
        h.update(d)
    return h.hexdigest()


class StreamHasher:
    """The content hash of rows arriving in record batches of any size: full blocks are hashed as soon as
    they are complete, so memory stays at one block. `feed` batches in order, then `finish`."""

    def __init__(self, schema: pa.Schema):
        self.schema = schema
        self.digests: list[bytes] = []
        self.pending: list[pa.RecordBatch] = []
        self.buffered = 0
        self.rows = 0

    def feed(self, batch: pa.RecordBatch) -> None:
        self.pending.append(batch)
        self.rows += batch.num_rows
        self.buffered += batch.num_rows
        if self.buffered >= BLOCK_ROWS:
            tab = pa.Table.from_batches(self.pending, schema=self.schema)
            full = self.buffered - self.buffered % BLOCK_ROWS
            self.digests += block_digests(tab.slice(0, full))
            self.pending = tab.slice(full).to_batches()
            self.buffered -= full

    def finish(self) -> tuple[str, list[bytes], int]:
        """(content hash, full-and-last block digests, rows)."""
        if self.pending:
            self.digests += block_digests(pa.Table.from_batches(self.pending, schema=self.schema))
            self.pending, self.buffered = [], 0
        return combine(self.schema, self.rows, self.digests), self.digests, self.rows


class Content(NamedTuple):
    hash: str
    digests: list[bytes]        # every block's, the last one possibly partial
    rows: int


_MEMO: dict[int, tuple[weakref.ref, Content]] = {}


def table_content(table: pa.Table) -> Content:
    """The content of `table`, computed once per table object: tables are immutable, so the result is kept
    until the table is freed (a build hashes its output to compare it with stored versions, then writes it)."""
    key = id(table)
    hit = _MEMO.get(key)
    if hit is not None and hit[0]() is table:
        return hit[1]
    digests = block_digests(table)
    content = Content(combine(table.schema, table.num_rows, digests), digests, table.num_rows)
    _MEMO[key] = (weakref.ref(table, lambda _ref: _MEMO.pop(key, None)), content)
    return content


def content_hash(table: pa.Table | Iterable[pa.RecordBatch], schema: pa.Schema | None = None) -> str:
    """sha256 of the rows of `table` (a Table, or record batches with `schema`) in order."""
    if isinstance(table, pa.Table):
        return table_content(table).hash
    if schema is None:
        raise ValueError("schema is required when hashing a stream of record batches")
    hasher = StreamHasher(schema)
    for batch in table:
        hasher.feed(batch)
    return hasher.finish()[0]
