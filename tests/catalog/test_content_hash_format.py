"""The content hash format ("prefdata-content-v1") is pinned: the same rows give these exact digests on every
run, machine and release, so a catalog written by an older prefdata still verifies. A change to the byte stream
must come with a new FORMAT tag and keep reading the old one; it cannot change these values."""
import datetime as dt

import pyarrow as pa

from catalog import hashing

SMALL_HASH = "138894e4e89413c071cc78d80739b3fe10a0d6c208cd8a8b5b6b46f96c061584"
BLOCKS_HASH = "b13676d1d67f1a9a79d014cedce27507f298c3da7f2a5074dbf6471f510b99be"


def small_table() -> pa.Table:
    """One column of each kind the hash serializes differently, with nulls."""
    return pa.table({
        "prompt": pa.array(["Say hi", None, "Zwölf €"]),
        "n": pa.array([1, None, -3], pa.int64()),
        "margin": pa.array([0.5, 1.25, None]),
        "ok": pa.array([True, None, False]),
        "images": pa.array([["a.png", "b.png"], [], None], pa.list_(pa.string())),
        "scores": pa.array([{"judge": 7.0, "rule": None}, None, {"judge": 1.0, "rule": 0.0}],
                           pa.struct([("judge", pa.float64()), ("rule", pa.float64())])),
        "at": pa.array([dt.datetime(2024, 1, 2, 3, 4, 5), None, dt.datetime(1999, 12, 31)], pa.timestamp("us")),
    })


def blocks_table() -> pa.Table:
    """Three hash blocks (the last one partial): 2 * 65,536 + 7 rows."""
    n = 2 * hashing.BLOCK_ROWS + 7
    return pa.table({"i": pa.array(range(n), pa.int32()),
                     "text": pa.array([f"response {i}" for i in range(n)])})


def test_small_table_hash_is_pinned():
    assert hashing.content_hash(small_table()) == SMALL_HASH


def test_multi_block_hash_is_pinned_and_layout_free():
    t = blocks_table()
    assert hashing.content_hash(t) == BLOCKS_HASH
    # chunking, large types and a stream of odd-sized batches give the same digest
    assert hashing.content_hash(pa.Table.from_batches(t.to_batches(max_chunksize=1000))) == BLOCKS_HASH
    assert hashing.content_hash(t.cast(pa.schema([("i", pa.int32()), ("text", pa.large_string())]))) == BLOCKS_HASH
    assert hashing.content_hash(t.to_batches(max_chunksize=4099), schema=t.schema) == BLOCKS_HASH


def test_content_is_computed_once_per_table():
    t = small_table()
    first = hashing.table_content(t)
    assert hashing.table_content(t) is first          # kept while the table lives
    assert first.rows == 3 and len(first.digests) == 1
    assert hashing.table_content(small_table()) == first    # an equal table: the same content, computed again
