"""Catalog benchmark: prints ONE JSON line.

  sql_groupby_s      SELECT stage, count(*), avg(margin) ... GROUP BY stage over a 1M-row pairs-like dataset
                     (median of 3), with the peak RSS growth during the queries next to the table's Arrow size
  append_s           appending 10k rows to the 1M-row dataset (lock, hash of the tail block + new rows, new
                     data file, commit), and whether any existing data file changed (it must not)
  read_old_version_s reading version 1 (1M rows) after the append, full table and one column
  write_s            writing the 1M rows as version 1 (includes the content hash), and the hash alone

usage: python benchmarks/bench_catalog.py [--rows 1000000] [--append-rows 10000] [--dir DIR]"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from catalog import Catalog, content_hash  # noqa: E402


def pairs_like(n: int, seed: int, start: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    idx = pa.array(np.arange(start, start + n))
    as_str = pc.cast(idx, pa.string())
    prompt_no = pc.cast(pa.array(np.arange(start, start + n) // 4), pa.string())
    score_c = rng.normal(7, 1.5, n)
    score_r = score_c - np.abs(rng.normal(1.5, 1.0, n))
    return pa.table({
        "prompt_id": pc.binary_join_element_wise("p", prompt_no, ""),
        "prompt": pc.binary_join_element_wise("Explain, step by step and with an example, question number ",
                                              prompt_no, ""),
        "chosen": pc.binary_join_element_wise("A careful, correct and complete answer that cites its sources, #",
                                              as_str, ""),
        "rejected": pc.binary_join_element_wise("A short answer with a mistake, #", as_str, ""),
        "chosen_id": pc.binary_join_element_wise("c", as_str, ""),
        "rejected_id": pc.binary_join_element_wise("r", as_str, ""),
        "score_chosen": score_c,
        "score_rejected": score_r,
        "margin": score_c - score_r,
        "weight": np.ones(n),
        "stage": pa.array(rng.integers(0, 3, n).astype(np.int32)),
        "strategy": pa.array(["all_pairs"] * n),
    })


def data_files(cat: Catalog, name: str) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in (Path(cat.uri(name)) / "data").iterdir()}


class PeakRss:
    """Samples this process's RSS every 2 ms in a thread: peak growth over the value at entry."""

    def __init__(self) -> None:
        self.proc, self.stop, self.peak = psutil.Process(), threading.Event(), 0

    def _run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __enter__(self) -> PeakRss:
        self.base = self.peak = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.growth_mb = (self.peak - self.base) / 2**20


def write_base(cat: Catalog, rows: int) -> tuple[float, float, int, float]:
    table = pairs_like(rows, seed=0)  # local, so it is freed before the query is measured
    hash_s, _ = timed(lambda: content_hash(table))
    write_s, v1 = timed(lambda: cat.write("bench-pairs", table, message="1M pairs", mode="overwrite"))
    return hash_s, write_s, v1, table.nbytes / 2**20


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--append-rows", type=int, default=10_000)
    ap.add_argument("--dir", default=None, help="catalog directory (default: a temporary one, removed after)")
    args = ap.parse_args()

    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_catalog_"))
    try:
        cat = Catalog.open(root)
        hash_s, write_s, v1, table_mb = write_base(cat, args.rows)
        gc.collect()

        query = 'SELECT stage, count(*) AS n, avg(margin) AS avg_margin FROM "bench-pairs" GROUP BY stage ORDER BY 1'
        with PeakRss() as peak:
            sql_s, result = timed(lambda: cat.sql(query), repeat=3)
        assert sum(result.column("n").to_pylist()) == args.rows

        before = data_files(cat, "bench-pairs")
        extra = pairs_like(args.append_rows, seed=1, start=args.rows)
        append_s, v2 = timed(lambda: cat.write("bench-pairs", extra, message="append 10k", mode="append"))
        after = data_files(cat, "bench-pairs")
        rewritten = sorted(n for n, st in before.items() if after.get(n) != st)

        read_old_s, old = timed(lambda: cat.read("bench-pairs", v1), repeat=3)
        read_col_s, _ = timed(lambda: cat.read("bench-pairs", v1, columns=["margin"]), repeat=3)
        scan_s, lazy_mean = timed(lambda: cat.scan("bench-pairs", v1).select("margin").mean().collect().item(),
                                  repeat=3)
        verify = cat.verify("bench-pairs", v2)
        print(json.dumps({
            "bench": "catalog", "rows": args.rows, "append_rows": args.append_rows,
            "write_s": round(write_s, 3), "content_hash_s": round(hash_s, 3),
            "sql_groupby_s": round(sql_s, 4), "sql_peak_rss_growth_mb": round(peak.growth_mb, 1),
            "table_arrow_mb": round(table_mb, 1),
            "append_s": round(append_s, 3), "append_version": v2,
            "existing_files_before_append": len(before), "existing_files_rewritten": len(rewritten),
            "new_files_after_append": len(set(after) - set(before)),
            "read_old_version_s": round(read_old_s, 3), "read_old_rows": old.num_rows,
            "read_old_one_column_s": round(read_col_s, 4), "polars_scan_mean_s": round(scan_s, 4),
            "append_hash_verified": verify["ok"], "avg_margin_v1": round(lazy_mean, 6),
            "cpus": os.cpu_count(), "python": platform.python_version(),
        }))
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
