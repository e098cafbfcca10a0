"""Text -> hashed n-grams (shingles), vectorized over a whole column: what `near_dedup` and `decontaminate`
compare. No Python loop over rows or tokens: numpy passes over the UTF-8 bytes of all texts at once.

Normalization (`normalize`, a polars expression): Unicode NFKC; lowercase; every punctuation or symbol
character (Unicode categories P* and S*: `.,;:!?'"-_()[]{}/\\@#$%^&*+=<>|~` and their Unicode kin) becomes
a space; runs of whitespace become one space; leading and trailing spaces go. "Don't STOP—now!" -> "don t
stop now". Words are the space-separated pieces of that text; characters are its Unicode code points
(spaces included).

Token hash: the stable 64-bit hash of the token's UTF-8 bytes (`builders/stable_hash.py`, the same value as
`hash_strings` gives for that word), so results do not depend on the process, machine or library version.
Shingle hash of tokens t_0..t_{k-1}: splitmix64((sum_j h(t_j) * M_j) mod 2^64 XOR k * GOLDEN), M_j fixed
odd constants. Shingles of a text with T tokens and size n: the T - n + 1 contiguous n-grams; a text with
1 <= T < n tokens has exactly one shingle, all its tokens (so short texts still compare: equal short texts
match); an empty text has none. Two different n-grams share a hash with probability about 2^-64."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

from builders.stable_hash import GOLDEN, _position_weights, byte_chunks, splitmix64, utf8_buffers

Unit = Literal["word", "char"]
_CHUNK_BYTES = 1 << 18      # text bytes per numpy pass: temporaries of a few MB are reused by malloc; big
                           # ones are fresh mmaps whose page faults cost more than the arithmetic (measured 2.5x)
SPACE = 0x20


def normalize(e: pl.Expr) -> pl.Expr:
    """The normalized text the n-grams are taken from (see the module doc)."""
    return (e.str.normalize("NFKC").str.to_lowercase()
            .str.replace_all(r"[\p{P}\p{S}]", " ").str.replace_all(r"\s+", " ").str.strip_chars())


def _ngram_weights(n: int) -> np.ndarray:
    return splitmix64(np.arange(n, dtype=np.uint64) + np.uint64(0x5EED)) | np.uint64(1)


@dataclass(frozen=True)
class Shingles:
    """Shingle hashes of D texts, flat: those of text d are hashes[offsets[d]:offsets[d + 1]]."""
    hashes: np.ndarray       # uint64
    offsets: np.ndarray      # int64, D + 1

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)


def _token_hashes(offsets: np.ndarray, data: np.ndarray, unit: Unit) -> tuple[np.ndarray, np.ndarray]:
    """(token hashes, token offsets per text) of normalized texts given as Arrow buffers (offsets from 0)."""
    n_bytes = len(data)
    if n_bytes == 0:
        return np.zeros(0, np.uint64), np.zeros(len(offsets), np.int64)
    text_start = np.zeros(n_bytes + 1, dtype=bool)
    text_start[offsets] = True
    text_start = text_start[:n_bytes]
    if unit == "word":
        member = data != SPACE                        # bytes that belong to a token (normalized: single spaces)
        prev_gap = np.r_[True, ~member[:-1]]
        start = member & (prev_gap | text_start)
    else:                                             # a code point starts at every non-continuation byte
        member = np.ones(n_bytes, dtype=bool)
        start = (data & 0xC0) != 0x80
    starts = np.flatnonzero(start)
    # byte position inside its token: distance to the last token start at or before it
    last = np.maximum.accumulate(np.where(start, np.arange(n_bytes), 0))
    pos = np.arange(n_bytes) - last
    w = _position_weights(int(pos.max()) + 1)
    with np.errstate(over="ignore"):
        terms = np.where(member, data.astype(np.uint64) * w[pos], np.uint64(0))
        sums = np.add.reduceat(terms, starts) if len(starts) else np.zeros(0, np.uint64)
        lengths = np.add.reduceat(member.astype(np.int64), starts) if len(starts) else np.zeros(0, np.int64)
        hashes = splitmix64(sums ^ (lengths.astype(np.uint64) * GOLDEN))
    before = np.concatenate([[0], np.cumsum(start)])
    return hashes, before[offsets]


def _ngrams(tok: np.ndarray, tok_off: np.ndarray, n: int) -> Shingles:
    """Shingle hashes from token hashes (see the module doc for short texts)."""
    T = len(tok)
    lengths = np.diff(tok_off)
    if T == 0:
        return Shingles(np.zeros(0, np.uint64), np.zeros(len(tok_off), np.int64))
    end = np.repeat(tok_off[1:], lengths)             # end (exclusive) of each token's text
    p = np.arange(T, dtype=np.int64)
    first = np.zeros(T, dtype=bool)
    first[tok_off[:-1][lengths > 0]] = True
    k = np.minimum(end - p, n)                        # tokens in the shingle starting at p
    valid = (k == n) | first
    padded = np.concatenate([tok, np.zeros(n, np.uint64)])
    m = _ngram_weights(n)
    acc = np.zeros(T, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            acc += np.where(j < k, padded[j:j + T], np.uint64(0)) * m[j]
        h = splitmix64(acc ^ (k.astype(np.uint64) * GOLDEN))
    keep = np.concatenate([[0], np.cumsum(valid)])
    return Shingles(h[valid], keep[tok_off])


def shingle_hashes(texts: pl.Series, n: int, unit: Unit = "word", *, normalized: bool = False) -> Shingles:
    """Hashed n-grams of every text (normalized first unless `normalized`). Null texts have no shingles."""
    if not normalized:
        texts = pl.select(normalize(pl.lit(texts))).to_series()
    offsets, data = utf8_buffers(texts)
    parts, counts = [], []
    for start, stop in byte_chunks(offsets, _CHUNK_BYTES):
        base = offsets[start]
        tok, tok_off = _token_hashes(offsets[start:stop + 1] - base, data[base:offsets[stop]], unit)
        sh = _ngrams(tok, tok_off, n)
        parts.append(sh.hashes)
        counts.append(sh.counts)
    hashes = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
    cnt = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    return Shingles(hashes, np.concatenate([[0], np.cumsum(cnt)]).astype(np.int64))
