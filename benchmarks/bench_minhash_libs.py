"""Benchmark: the MinHash implementations near_dedup could be built on, signature cost per prompt on the same
prompts (benchmarks/hygiene_kit.py), word 5-grams of the normalized text, 128 permutations. What led to
the choice in docs/builders.md ("Why numpy MinHash"); libraries not installed are reported as such.

  ours                builders.shingles + builders.minhash: vectorized over all prompts (no per-prompt Python)
  datasketch          MinHash(128).update_batch(5-gram strings), one object per prompt
  rensa_per_prompt    rensa.RMinHash(128, seed).update(5-gram strings), one object per prompt
  rensa_matrix        our numpy shingle hashes -> RMinHash.digest_matrix_from_flat_token_hashes (Rust, one call),
                      then .to_rows() into numpy (its only way out)
  datatrove           MinhashDedupSignature.get_shingles + get_signature per document (the stage-1 work,
                      without its signature files), 14 buckets x 9 hashes, whitespace words in place of
                      its default spaCy tokenizer, n-grams encoded before its xxhash call

    python benchmarks/bench_minhash_libs.py --prompts 20000"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
PERM, N = 128, 5


def per_prompt(fn, n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return round((time.perf_counter() - t0) / n * 1e6, 2)


def grams(texts: list[str]) -> list[list[str]]:
    out = []
    for t in texts:
        w = t.split()
        out.append([" ".join(w[i:i + N]) for i in range(max(1, len(w) - N + 1))])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=20_000)
    args = ap.parse_args()
    from hygiene_kit import corpus, texts

    from builders.minhash import signatures
    from builders.shingles import normalize, shingle_hashes

    idx, off, vocab, _ = corpus(args.prompts, 0)
    norm = pl.select(normalize(pl.lit(texts(idx, off, vocab)))).to_series()
    raw = norm.to_list()
    res: dict[str, object] = {"bench": "minhash_libs", "prompts": args.prompts, "num_perm": PERM,
                              "unit": "microseconds per prompt (signature only)"}
    signatures(shingle_hashes(norm.head(100), N, normalized=True), PERM, 0)       # warm-up
    res["ours"] = per_prompt(lambda: signatures(shingle_hashes(norm, N, normalized=True), PERM, 0), len(raw))

    try:
        from datasketch import MinHash

        def ds():
            for g in grams(raw):
                m = MinHash(num_perm=PERM, seed=1)
                m.update_batch([s.encode() for s in g])
        res["datasketch"] = per_prompt(ds, len(raw))
    except ImportError:
        res["datasketch"] = "not installed"
    try:
        import rensa

        def rensa_each():
            for g in grams(raw):
                m = rensa.RMinHash(PERM, 1)
                m.update(g)
                m.digest()

        def rensa_matrix():
            sh = shingle_hashes(norm, N, normalized=True)
            m = rensa.RMinHash.digest_matrix_from_flat_token_hashes(sh.hashes, sh.offsets.astype(np.uint64), PERM, 1)
            return np.asarray(m.to_rows(), dtype=np.uint32)
        res["rensa_per_prompt"] = per_prompt(rensa_each, len(raw))
        res["rensa_matrix"] = per_prompt(rensa_matrix, len(raw))
    except ImportError:
        res["rensa_per_prompt"] = res["rensa_matrix"] = "not installed"
    try:
        from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature

        class Whitespace:      # in place of its default spaCy tokenizer (a lower bound on its cost)
            @staticmethod
            def word_tokenize(text: str) -> list[str]:
                return text.split()

        stage = MinhashDedupSignature.__new__(MinhashDedupSignature)
        try:
            stage.__init__("/tmp/unused", config=MinhashConfig(n_grams=N, num_buckets=14, hashes_per_bucket=9))
        except ImportError:    # the spaCy tokenizer is loaded in __init__; everything else is set before it
            pass
        stage.word_tokenizer = Whitespace()
        # datatrove 0.10.1 hashes n-gram str with xxhash, which (4.x) takes bytes only: encode first
        hash_bytes = stage._hash_func
        stage._hash_func = lambda text: hash_bytes(text.encode())

        def dt():
            for t in raw:
                stage.get_signature(stage.get_shingles(t))
        res["datatrove"] = per_prompt(dt, len(raw))
    except ImportError:
        res["datatrove"] = "not installed"
    print(json.dumps(res))


if __name__ == "__main__":
    main()
