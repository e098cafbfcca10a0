"""MinHash signatures, LSH bands and the near-duplicate components they imply; numpy only, seeded, defined
here (so a library upgrade never changes which prompts cluster).

Signature: for permutation i (i < num_perm), with a_i odd and b_i drawn from splitmix64 of (seed, i),
    sig_i(S) = high 32 bits of  min_{x in S} ((a_i * x + b_i) mod 2^64)
over the text's shingle hashes x (builders/shingles.py). (a x + b mod 2^64, read by its high bits, is the
multiply-add-shift family: universal, and two ufunc passes per permutation; the minimum of the full 64-bit
values has the minimum high half, so the shift is applied once per signature, not per shingle.)
P(sig_i(A) == sig_i(B)) = Jaccard(A, B) up to the hash family's bias (measured: mean error < 0.01 over
J in [0.1, 0.9]).

LSH: b bands of r rows (b * r <= num_perm); band j's key is the stable hash of sig[j*r:(j+1)*r]. Two texts
are a candidate pair when they share a key in some band: P = 1 - (1 - J^r)^b. `optimal_bands` picks (b, r)
for a Jaccard threshold t as datasketch does (weights 0.5/0.5): the pair minimizing the probability mass of
false positives (integral of P over [0, t]) plus false negatives (integral of 1 - P over [t, 1]).

Verification sketch: the low 8 bits of each signature value (b-bit minwise hashing, Li and Konig 2010):
num_perm bytes a text. Two texts' sketches agree in a position with probability J + (1 - J) / 256, so
J_est = (agree - 1/256) / (1 - 1/256).

Components: the connected components of the candidate graph (every pair of texts sharing a band key), or of
its verified subgraph (pairs with J_est >= threshold): exact, by scipy's connected_components."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from builders.shingles import Shingles
from builders.stable_hash import splitmix64
from prefdata.errors import PrefdataError

_PERM_CHUNK = 1 << 16      # shingles per pass: 512 KB temporaries stay in cache (measured 2-3x faster than 16 MB)
SKETCH_LEVELS = 256        # b-bit sketch with b = 8


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of the num_perm hash functions for `seed`: a odd, both 64-bit."""
    base = splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    i = np.arange(num_perm, dtype=np.uint64)
    with np.errstate(over="ignore"):
        a = splitmix64(base + np.uint64(2) * i) | np.uint64(1)
        b = splitmix64(base + np.uint64(2) * i + np.uint64(1))
    return a, b


def signatures(sh: Shingles, num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(sig uint32 [D', num_perm], has) for the D texts: rows only for texts with >= 1 shingle (`has`)."""
    counts = sh.counts
    has = counts > 0
    starts = sh.offsets[:-1][has]
    a, b = permutations(num_perm, seed)
    sig = np.empty((len(starts), num_perm), dtype=np.uint32)
    lo = 0
    while lo < len(starts):
        # whole texts per pass, about _PERM_CHUNK shingles each
        hi = int(np.searchsorted(starts, starts[lo] + _PERM_CHUNK, side="left"))
        hi = min(max(hi, lo + 1), len(starts))
        s0 = starts[lo]
        s1 = sh.offsets[1:][has][hi - 1]
        x = sh.hashes[s0:s1]
        rel = starts[lo:hi] - s0
        v = np.empty_like(x)
        with np.errstate(over="ignore"):
            for i in range(num_perm):
                np.multiply(x, a[i], out=v)
                v += b[i]
                sig[lo:hi, i] = np.minimum.reduceat(v, rel) >> np.uint64(32)
        lo = hi
    return sig, has


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """uint64 [D', bands]: the stable hash of each band's r signature values."""
    w = splitmix64(np.arange(rows, dtype=np.uint64) + np.uint64(0xBA4D)) | np.uint64(1)
    out = np.empty((sig.shape[0], bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(bands):
            block = sig[:, j * rows:(j + 1) * rows].astype(np.uint64)
            out[:, j] = splitmix64((block * w).sum(axis=1, dtype=np.uint64) ^ np.uint64(rows))
    return out


def sketch(sig: np.ndarray) -> np.ndarray:
    """uint8 [D', num_perm]: the low 8 bits of every signature value."""
    return sig.astype(np.uint8)                       # unsigned narrowing keeps the low bits


def estimated_jaccard(sk_a: np.ndarray, sk_b: np.ndarray) -> np.ndarray:
    agree = (sk_a == sk_b).mean(axis=1)
    return np.clip((agree - 1 / SKETCH_LEVELS) / (1 - 1 / SKETCH_LEVELS), 0.0, 1.0)


def candidate_probability(j: np.ndarray | float, bands: int, rows: int) -> np.ndarray:
    return 1.0 - (1.0 - np.asarray(j, dtype=np.float64) ** rows) ** bands


def optimal_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(b, r) minimizing false-positive + false-negative probability mass around `threshold` (see the module
    doc); integrals by the trapezoid rule on 2001 points (datasketch integrates with scipy's quad: same pick)."""
    best, best_err = (1, 1), float("inf")
    lo, hi = np.linspace(0.0, threshold, 2001), np.linspace(threshold, 1.0, 2001)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = np.trapezoid(candidate_probability(lo, b, r), lo)
            fn = np.trapezoid(1.0 - candidate_probability(hi, b, r), hi)
            err = 0.5 * fp + 0.5 * fn
            if err < best_err:
                best, best_err = (b, r), err
    return best


MAX_PAIRS = 50_000_000      # verified mode: distinct candidate pairs held at once (8 bytes each, plus sketches)


@dataclass(frozen=True)
class Components:
    labels: np.ndarray        # component index of each text (0..k-1, numbered by first member)
    identical: int            # texts whose signature equals an earlier text's (linked without LSH)
    candidate_pairs: int | None   # verified mode: distinct pairs sharing a band key (identical ones not counted)
    verified_pairs: int | None    # verified mode: of those, pairs with estimated Jaccard >= threshold


def _runs(sorted_keys: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(run index of each sorted row, run start positions) for rows sorted by `sorted_keys` (all equal = one run)."""
    n = len(sorted_keys[0])
    new = np.ones(n, dtype=bool)
    if n:
        same = np.ones(n - 1, dtype=bool)
        for k in sorted_keys:
            same &= k[1:] == k[:-1]
        new[1:] = ~same
    return np.cumsum(new) - 1, np.flatnonzero(new)


def _band_runs(keys: np.ndarray, scope: np.ndarray | None):
    """Per band: (rows sorted by (scope, key, row), run index of each, run starts, run sizes)."""
    for j in range(keys.shape[1]):
        k = keys[:, j]
        # stable sorts: rows with equal keys stay in row order
        order = np.argsort(k, kind="stable") if scope is None else np.lexsort((k, scope))
        sorted_keys = [k[order]] + ([] if scope is None else [scope[order]])
        run, starts = _runs(sorted_keys)
        yield order, run, starts, np.diff(np.r_[starts, len(order)])


def _star_edges(keys: np.ndarray, scope: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Each row linked to the first row of every band run it is in: the same components as all pairs."""
    left, right = [], []
    for order, run, starts, size in _band_runs(keys, scope):
        multi = size[run] > 1
        left.append(order[multi])
        right.append(order[starts[run]][multi])
    return (np.concatenate(left), np.concatenate(right)) if left else (np.zeros(0, np.int64),) * 2


def _all_pairs(keys: np.ndarray, scope: np.ndarray | None) -> np.ndarray:
    """Distinct pairs (i < j) of rows sharing a band run, as i * D + j."""
    D = keys.shape[0]
    runs = list(_band_runs(keys, scope))
    total = sum(int((size * (size - 1) // 2).sum()) for *_, size in runs)
    if total > MAX_PAIRS:
        biggest = max(int(size.max()) for *_, size in runs)
        raise PrefdataError(f"near_dedup: {total:,} candidate pairs to verify (up to {biggest:,} texts share one "
                            f"band key); raise threshold (or rows), or set verify: false (components of all "
                            f"candidate pairs, found without listing them)")
    found = []
    for order, run, starts, size in runs:
        pos = np.arange(D) - starts[run]                  # position inside the run
        partners = size[run] - 1 - pos                    # later members of the same run
        if not partners.any():
            continue
        left = np.repeat(order, partners)
        step = np.arange(len(left)) - np.repeat(np.cumsum(partners) - partners, partners)
        right = order[np.repeat(np.arange(D) + 1, partners) + step]
        found.append(np.minimum(left, right) * D + np.maximum(left, right))
    return np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)


def components(keys: np.ndarray, sig_id: np.ndarray, *, scope: np.ndarray | None = None,
               sk: np.ndarray | None = None, threshold: float | None = None) -> Components:
    """Connected components of texts (rows of `keys`) linked when they share a band key (within the same `scope`
    value, when given) and, with a sketch `sk`, only when their estimated Jaccard is >= threshold.

    Texts with the same full-signature hash `sig_id` (and scope) are linked directly and enter the LSH once:
    they share every band and sketch, so this gives the same components while a bucket of 10^5 copies of one
    prompt costs nothing (two different signatures share a 64-bit sig_id with probability ~2^-64)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    D = keys.shape[0]
    ident_keys = [sig_id] + ([] if scope is None else [scope])
    order = np.lexsort(tuple(reversed(ident_keys)))
    run, starts = _runs([k[order] for k in ident_keys])
    first = np.empty(D, dtype=np.int64)
    first[order] = order[starts[run]]                     # each text's identical representative (lowest row)
    reps = np.unique(first)
    identical = D - len(reps)
    rep_scope = None if scope is None else scope[reps]
    cand = verified = None
    if sk is None:
        a, b = _star_edges(keys[reps], rep_scope)
    else:
        pairs = _all_pairs(keys[reps], rep_scope)
        a, b = pairs // max(len(reps), 1), pairs % max(len(reps), 1)
        keep = np.zeros(len(pairs), dtype=bool)
        for s in range(0, len(pairs), 1 << 16):
            e = s + (1 << 16)
            keep[s:e] = estimated_jaccard(sk[reps[a[s:e]]], sk[reps[b[s:e]]]) >= threshold
        cand, verified = len(pairs), int(keep.sum())
        a, b = a[keep], b[keep]
    # edges: LSH links between representatives, and every text to its representative
    src = np.concatenate([reps[a], np.arange(D)])
    dst = np.concatenate([reps[b], first])
    graph = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(D, D))
    _, labels = connected_components(graph, directed=False)
    # number components by their first member, so labels do not depend on scipy's traversal order
    _, firsts = np.unique(labels, return_index=True)
    renum = np.empty(len(firsts), dtype=np.int64)
    renum[np.argsort(firsts, kind="stable")] = np.arange(len(firsts))
    return Components(renum[labels], identical, cand, verified)
