"""A 64-bit hash of strings that is the same in every process, run, machine and library version.

Seeded choices (`pairs` with `tie_break: seeded` or `max_pairs_per_prompt` + `select: random`) key each
draw on a hash of (seed, prompt_id, response ids), so a prompt's choice depends on nothing but its own
rows: adding a prompt, reordering the input or running per partition changes nothing else. Python's
`hash` is salted per process and polars' `hash` may change between polars versions, so neither fits.

The hash is defined here, on the UTF-8 bytes, and computed with numpy over the Arrow buffers:
  h(s)      = splitmix64( (sum_k  b_k * W[k])  mod 2^64  XOR  len(s) * GOLDEN )     (k = byte position)
  W[k]      = splitmix64(k + 1)                                  (fixed per-position weights)
  splitmix64 is the finalizer of Vigna's SplitMix64 (a bijection of uint64 with full avalanche).
The inner sum is a multilinear hash (two distinct strings of equal length collide with probability
about 2^-57), the finalizer spreads it over all 64 bits. Only vectorized numpy: a pass over the bytes."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import polars as pl
import pyarrow as pa

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_CHUNK_BYTES = 1 << 24          # bytes hashed per numpy pass (bounds the temporaries to ~16 M x 8 bytes)
_weights = np.zeros(0, dtype=np.uint64)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function, elementwise on uint64 (wrapping arithmetic is intended)."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64, copy=True) + GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _position_weights(n: int) -> np.ndarray:
    global _weights
    if len(_weights) < n:
        _weights = splitmix64(np.arange(1, max(n, 2 * len(_weights)) + 1, dtype=np.uint64))
    return _weights[:n]


def _hash_chunk(offsets: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Hashes of the strings data[offsets[i]:offsets[i+1]] (offsets relative to `data`)."""
    lengths = np.diff(offsets)
    n = len(lengths)
    out = np.zeros(n, dtype=np.uint64)
    longest = int(lengths.max()) if n else 0
    with np.errstate(over="ignore"):
        if len(data) and longest * n <= 4 * len(data):
            # similar lengths (ids): one pass per byte position over all strings, no per-byte index arrays
            w = _position_weights(longest)
            padded = np.concatenate([data, np.zeros(1, np.uint8)])
            starts = offsets[:-1]
            for k in range(longest):
                byte = padded[np.where(lengths > k, starts + k, len(data))]
                out += byte.astype(np.uint64) * w[k]
        elif len(data):
            pos = np.arange(len(data), dtype=np.int64) - np.repeat(offsets[:-1], lengths)
            terms = data.astype(np.uint64) * _position_weights(longest)[pos]
            nonempty = lengths > 0
            out[nonempty] = np.add.reduceat(terms, offsets[:-1][nonempty])   # wraps mod 2^64
        return splitmix64(out ^ (lengths.astype(np.uint64) * GOLDEN))


def utf8_buffers(values: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, data): the strings' UTF-8 bytes in one buffer, string i = data[offsets[i]:offsets[i + 1]]
    (offsets start at 0; a null is the empty string). No copy of the bytes where Arrow already has them so."""
    arr = values.cast(pl.String).to_arrow()
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    arr = arr.cast(pa.large_string()).fill_null("")
    _, off_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(off_buf, dtype=np.int64)[arr.offset:arr.offset + len(arr) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return offsets - offsets[0], data[offsets[0]:offsets[-1]]


def byte_chunks(offsets: np.ndarray, chunk_bytes: int) -> Iterator[tuple[int, int]]:
    """(start, stop): consecutive ranges of whole strings of about chunk_bytes bytes (at least one string)."""
    n, start = len(offsets) - 1, 0
    while start < n:
        stop = int(np.searchsorted(offsets, offsets[start] + chunk_bytes, side="right")) - 1
        stop = min(max(stop, start + 1), n)
        yield start, stop
        start = stop


def hash_strings(values: pl.Series) -> np.ndarray:
    """uint64 hash of each string (null hashes like the empty string; callers never pass nulls)."""
    offsets, data = utf8_buffers(values)
    out = np.empty(len(offsets) - 1, dtype=np.uint64)
    for start, stop in byte_chunks(offsets, _CHUNK_BYTES):
        base = offsets[start]
        out[start:stop] = _hash_chunk(offsets[start:stop + 1] - base, data[base:offsets[stop]])
    return out


def combine(*parts: np.ndarray) -> np.ndarray:
    """Order-sensitive combination of uint64 hashes: combine(a, b) != combine(b, a)."""
    h = np.zeros(len(parts[0]), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for p in parts:
            h = splitmix64(h * np.uint64(31) + p)
    return h


def seeded_hash(seed: int, *columns: pl.Series) -> np.ndarray:
    """Hash of (seed, column values...) per row: the key of a seeded draw."""
    n = len(columns[0])
    s = splitmix64(np.full(n, np.uint64(seed & 0xFFFFFFFFFFFFFFFF), dtype=np.uint64))
    return combine(s, *(hash_strings(c) for c in columns))


def to_unit(h: np.ndarray) -> np.ndarray:
    """uint64 hashes -> floats uniform in [0, 1) (the top 53 bits)."""
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
