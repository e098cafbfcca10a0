"""Benchmark: the `decontaminate` step vs a hand-written DuckDB n-gram join, same data, same matches asserted.

Data (benchmarks/hygiene_kit.py, seeded): N prompts and M benchmark prompts (another seed), 20-90 words
each; `--rate` (default 0.5 %) of the prompts get a run of 13-20 consecutive words of a random benchmark item
inserted at a random word position. Benchmark written as parquet (id, prompt).

  ours    builders.decontaminate.build_decontaminate(ngram 13, action flag: the named item is kept per prompt to
          be checked; drop runs the same matching) on a prompts table: reading and hashing the benchmark,
          normalization, n-gram hashing and the polars hash join included
  duckdb  one SQL query: the same normalization (lower, punctuation/symbols -> space, whitespace collapsed,
          trimmed; the data is ASCII, so NFKC changes nothing), string_split, the hash of every 13-word
          n-gram (a text of fewer words: the whole text), unnest, join on the hash, distinct (prompt, item)

Asserted: the same contaminated prompts, and the item ours names for each is one DuckDB matched. Each runs
in its own subprocess (peak RSS = its ru_maxrss, input included); the parent prints ONE JSON line.

Full size (the issue's target: ours <= 1.5x DuckDB's time):
    python benchmarks/bench_decontaminate.py --prompts 1000000 --bench-prompts 10000
Quick check: python benchmarks/bench_decontaminate.py --prompts 20000 --bench-prompts 2000"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from hygiene_kit import corpus, report, spawn, texts  # noqa: E402

NGRAM = 13


def make_data(n: int, m: int, rate: float, seed: int, out: Path) -> int:
    """prompts.parquet (prompt_id, prompt) and bench.parquet (id, prompt); returns the contaminated count."""
    b_idx, b_off, vocab, _ = corpus(m, seed + 1000)
    idx, off, _, rng = corpus(n, seed)
    chosen = rng.choice(n, size=int(round(n * rate)), replace=False)
    spliced = []
    for p in chosen:                       # data generation only: splice a span of a benchmark item in
        item = int(rng.integers(0, m))
        span = b_idx[b_off[item]:b_off[item + 1]]
        k = int(rng.integers(NGRAM, min(20, len(span)) + 1))
        s = int(rng.integers(0, len(span) - k + 1))
        w = idx[off[p]:off[p + 1]]
        at = int(rng.integers(0, len(w) + 1))
        spliced.append(" ".join(vocab[np.concatenate([w[:at], span[s:s + k], w[at:]])]))
    prompts = texts(idx, off, vocab).scatter(chosen, spliced)
    pl.DataFrame({"prompt_id": [f"p{i:08d}" for i in range(n)], "prompt": prompts}).write_parquet(
        out / "prompts.parquet")
    pl.DataFrame({"id": [f"b{i:06d}" for i in range(m)], "prompt": texts(b_idx, b_off, vocab)}) \
        .write_parquet(out / "bench.parquet")
    return len(chosen)


def run_ours(data: Path) -> dict:
    from builders.base import StepContext
    from builders.decontaminate import DecontaminateConfig, build_decontaminate

    df = pl.read_parquet(data / "prompts.parquet")
    cfg = DecontaminateConfig(benchmarks=[{"name": "bench", "path": "bench.parquet"}], ngram=NGRAM, action="flag")
    ctx = StepContext(base_dir=data, progress=False)
    warm = DecontaminateConfig(benchmarks=[{"name": "warm", "path": "bench.parquet"}], ngram=NGRAM - 1)
    build_decontaminate(df.head(100).lazy(), warm, ctx)                  # warm-up: imports, regex compilation
    t0 = time.perf_counter()
    built = build_decontaminate(df.lazy(), cfg, ctx)
    out = built.frame.collect()
    secs = time.perf_counter() - t0
    found = out.filter(pl.col("contamination").is_not_null()).select(
        "prompt_id", pl.col("contamination").str.strip_prefix("bench:").alias("id"))
    found.write_parquet(data / "ours.parquet")
    return {"seconds": round(secs, 3), "us_per_prompt": round(secs / df.height * 1e6, 2),
            "contaminated": found.height}


def run_duckdb(data: Path) -> dict:
    import duckdb

    con = duckdb.connect()
    norm = r"trim(regexp_replace(regexp_replace(lower(prompt), '[\p{P}\p{S}]', ' ', 'g'), '\s+', ' ', 'g'))"
    grams = (f"CASE WHEN len(w) < {NGRAM} THEN [hash(array_to_string(w, ' '))] ELSE "
             f"list_transform(range(1, len(w) - {NGRAM - 2}), lambda i: hash(array_to_string(w[i:i + {NGRAM - 1}], ' '))) END")
    t0 = time.perf_counter()
    matches = con.sql(f"""
        WITH pw AS (SELECT prompt_id, string_split({norm}, ' ') AS w FROM read_parquet('{data / "prompts.parquet"}')),
             bw AS (SELECT id, string_split({norm}, ' ') AS w FROM read_parquet('{data / "bench.parquet"}')),
             pg AS (SELECT prompt_id, unnest({grams}) AS h FROM pw),
             bg AS (SELECT DISTINCT id, unnest({grams}) AS h FROM bw)
        SELECT DISTINCT prompt_id, id FROM pg JOIN bg USING (h)""").pl()
    secs = time.perf_counter() - t0
    matches.write_parquet(data / "duckdb.parquet")
    n = con.sql(f"SELECT count(*) FROM read_parquet('{data / 'prompts.parquet'}')").fetchall()[0][0]
    return {"seconds": round(secs, 3), "us_per_prompt": round(secs / n * 1e6, 2),
            "contaminated": matches["prompt_id"].n_unique()}


def same_matches(data: Path) -> bool:
    """The same contaminated prompts, each named item among DuckDB's matched items of that prompt."""
    ours = pl.read_parquet(data / "ours.parquet")
    duck = pl.read_parquet(data / "duckdb.parquet")
    named_ok = ours.join(duck, on=["prompt_id", "id"], how="semi").height == ours.height
    return set(ours["prompt_id"]) == set(duck["prompt_id"]) and named_ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=1_000_000)
    ap.add_argument("--bench-prompts", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=0.005)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--phase", choices=["ours", "duckdb"])
    ap.add_argument("--data")
    args = ap.parse_args()
    if args.phase:
        return report({"ours": run_ours, "duckdb": run_duckdb}[args.phase](Path(args.data)))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        planted = make_data(args.prompts, args.bench_prompts, args.rate, args.seed, data)
        ours = spawn(__file__, "ours", data)
        duck = spawn(__file__, "duckdb", data)
        same = same_matches(data)
    if not same:
        raise SystemExit("ours and DuckDB found different contaminated prompts")
    print(json.dumps({"bench": "decontaminate", "prompts": args.prompts, "bench_prompts": args.bench_prompts,
                      "ngram": NGRAM, "planted": planted, "same_matches": same, "ours": ours, "duckdb": duck,
                      "time_ratio_ours_over_duckdb": round(ours["seconds"] / duck["seconds"], 3),
                      "targets": {"ratio<=1.5": ours["seconds"] / duck["seconds"] <= 1.5}}))


if __name__ == "__main__":
    main()
