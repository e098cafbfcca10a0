"""Catalog.write_batches: one version from a stream of record batches, identical to write() of the same rows."""
from __future__ import annotations

import pyarrow as pa
import pytest
from catalog_kit import PAIRS_SCHEMA, pairs_table

from catalog import Catalog
from catalog.hashing import BLOCK_ROWS, content_hash
from prefdata.errors import PrefdataError, SchemaError


def _batches(table: pa.Table, sizes: list[int]):
    start = 0
    for n in sizes:
        yield from table.slice(start, n).to_batches()
        start += n


def test_stream_equals_table_write(tmp_path):
    n = BLOCK_ROWS + 1234                                  # more than one hash block, odd batch sizes
    table = pairs_table(n)
    a, b = Catalog.open(tmp_path / "a"), Catalog.open(tmp_path / "b")
    va = a.write("ds", table, message="m", lineage={"builder": "t", "inputs": []})
    vb = b.write_batches("ds", _batches(table, [7, 40_000, 30_000, n - 70_007]), schema=PAIRS_SCHEMA,
                         message="m", lineage={"builder": "t", "inputs": []})
    assert va == vb == 1
    assert b.read("ds").equals(table)
    la, lb = a.lineage("ds"), b.lineage("ds")
    assert la["content_hash"] == lb["content_hash"] == content_hash(table)
    assert (lb["rows"], lb["rows_written"], lb["mode"]) == (n, n, "create")
    assert b.verify("ds")["ok"]
    # a second streamed write is a new version (overwrite); the first stays readable
    v2 = b.write_batches("ds", pa.RecordBatchReader.from_batches(PAIRS_SCHEMA, pairs_table(5, tag="u").to_batches()))
    assert v2 == 2 and b.read("ds").num_rows == 5 and b.read("ds", 1).num_rows == n
    assert b.lineage("ds", 2)["base_version"] == 1 and b.verify("ds")["ok"]


def test_skip_if_hash_commits_nothing_and_leaves_no_files(tmp_path):
    cat = Catalog.open(tmp_path / "c")
    table = pairs_table(100)
    cat.write_batches("ds", table.to_batches(), schema=PAIRS_SCHEMA)
    files = sorted((cat.root / "ds.lance" / "data").iterdir())
    again = cat.write_batches("ds", table.to_batches(), schema=PAIRS_SCHEMA, skip_if_hash=content_hash(table))
    assert again is None and [v["version"] for v in cat.versions("ds")] == [1]
    assert sorted((cat.root / "ds.lance" / "data").iterdir()) == files


def test_bad_streams_are_typed_errors(tmp_path):
    cat = Catalog.open(tmp_path / "c")
    with pytest.raises(PrefdataError, match="needs schema="):
        cat.write_batches("ds", pairs_table(3).to_batches())
    with pytest.raises(PrefdataError, match="mode 'overwrite' or 'create'"):
        cat.write_batches("ds", pairs_table(3).to_batches(), schema=PAIRS_SCHEMA, mode="append")
    other = pa.table({"x": [1]}).to_batches()
    with pytest.raises(SchemaError, match="a batch has schema"):
        cat.write_batches("ds", list(pairs_table(3).to_batches()) + other, schema=PAIRS_SCHEMA)
    assert "ds" not in cat.names()


def test_empty_stream_is_an_empty_version(tmp_path):
    cat = Catalog.open(tmp_path / "c")
    v = cat.write_batches("ds", iter([]), schema=PAIRS_SCHEMA)
    assert v == 1 and cat.read("ds").num_rows == 0 and cat.read("ds").schema.names == PAIRS_SCHEMA.names
    assert cat.lineage("ds")["content_hash"] == content_hash(PAIRS_SCHEMA.empty_table())
