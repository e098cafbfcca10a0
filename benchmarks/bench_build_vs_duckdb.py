"""Benchmark: `prefdata build` end to end vs a hand-written DuckDB query, on the same parquet, in the same run.

Pipeline: rank -> pairs(all_pairs, min_margin 0.5) -> curriculum(3 stages by margin, easy first), on
synthetic scored responses (--prompts N prompts x 4; the input of benchmarks/bench_builders.py, written
once to parquet, not timed). Each side is one fresh process, timed from process start to exit:

  duckdb        `python -c ...`: import duckdb, read the parquet, the query of bench_builders.py, COPY the
                pairs to parquet
  build_file    `prefdata build` of a recipe whose source is the parquet file, into an empty catalog: the
                source is ingested, hashed and stored as `bench-source`, the steps run, the pairs get their
                content hash and lineage and are committed as `bench@1`
  build_dataset `prefdata build` of the same steps from the catalog dataset `bench-input` (the parquet
                ingested beforehand with `prefdata ingest`, not timed): what a rebuild costs

The sides run in turns (duckdb, build_file, build_dataset) --repeat times; the JSON line has every
time, the median of each and median(build) / median(duckdb) (goal <= 1.0). The rows of bench@1 are
checked equal (same values, same order) to DuckDB's parquet. One JSON line on stdout.

Full size (the issue's figure): nice -n 19 .venv/bin/python benchmarks/bench_build_vs_duckdb.py --prompts 250000 --repeat 3
Quick check:                   .venv/bin/python benchmarks/bench_build_vs_duckdb.py --prompts 5000"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_builders import MIN_MARGIN, OUT_COLS, SQL, STAGES, make_input  # noqa: E402

# DuckDB reads the parquet with its row numbers (the input order the build keeps) and writes the pairs
DUCKDB = """
import sys, time
import duckdb
t0 = time.perf_counter()
con = duckdb.connect()
con.sql("SET enable_progress_bar = false")
con.sql(f"CREATE VIEW resp AS SELECT *, file_row_number AS row FROM read_parquet('{sys.argv[1]}', file_row_number=true)")
con.sql("COPY (" + sys.argv[3] + f") TO '{sys.argv[2]}' (FORMAT parquet)")
print(round(time.perf_counter() - t0, 3))
"""

STEPS = [{"rank": {"by": "score", "aggregate": "mean"}},
         {"pairs": {"strategy": "all_pairs", "min_margin": MIN_MARGIN}},
         {"curriculum": {"stages": STAGES, "by": "margin", "order": "easy_to_hard"}}]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd: list[str], env: dict[str, str], cpu: list[float]) -> tuple[float, str]:
    """Wall seconds of one process (appends its user+sys CPU seconds to `cpu`: steadier on a busy machine)."""
    c0, t0 = _children_cpu(), time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    took = time.perf_counter() - t0
    cpu.append(round(_children_cpu() - c0, 3))
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed:\n{res.stderr[-2000:]}")
    return took, res.stdout


def identical(catalog: Path, duck_out: Path) -> bool:
    import lance
    import pyarrow as pa
    import pyarrow.parquet as pq

    ours = lance.dataset(str(catalog / "bench.lance")).to_table(columns=OUT_COLS)
    theirs = pq.read_table(duck_out, columns=OUT_COLS)
    if ours.num_rows != theirs.num_rows:
        return False
    for c in OUT_COLS:
        a, b = ours.column(c), theirs.column(c)
        typ = pa.string() if pa.types.is_string(a.type) or pa.types.is_large_string(a.type) else a.type
        if not a.cast(typ).equals(b.cast(typ)):
            return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=250_000, help="prompts (x4 responses); 250000 = 1M responses")
    ap.add_argument("--repeat", type=int, default=1, help="turns of (duckdb, build_file, build_dataset)")
    args = ap.parse_args()
    import yaml

    prefdata_bin = str(Path(sys.executable).with_name("prefdata"))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    times: dict[str, list[float]] = {"duckdb": [], "build_file": [], "build_dataset": []}
    cpu: dict[str, list[float]] = {k: [] for k in times}
    duck_query_s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        tmp = Path(tmp)
        src = tmp / "responses.parquet"
        import pyarrow.parquet as pq
        pq.write_table(make_input(args.prompts), src)
        (tmp / "file.yaml").write_text(yaml.safe_dump(
            {"name": "bench", "source": {"path": str(src), "format": "parquet"}, "steps": STEPS}))
        (tmp / "dataset.yaml").write_text(yaml.safe_dump(
            {"name": "bench", "source": {"dataset": "bench-input"}, "steps": STEPS}))
        lineage = {}
        for turn in range(args.repeat):
            duck_out = tmp / f"duck-{turn}.parquet"
            took, out = timed([sys.executable, "-c", DUCKDB, str(src), str(duck_out), SQL], env, cpu["duckdb"])
            times["duckdb"].append(took)
            duck_query_s.append(float(out.strip().splitlines()[-1]))

            cat_file = tmp / f"cat-file-{turn}"
            took, out = timed([prefdata_bin, "build", str(tmp / "file.yaml"), "--catalog", str(cat_file), "--json"],
                              env, cpu["build_file"])
            times["build_file"].append(took)
            lineage = json.loads(out)["lineage"]
            if turn == 0 and not identical(cat_file, duck_out):
                raise SystemExit("the build's pairs differ from DuckDB's")

            cat_ds = tmp / f"cat-ds-{turn}"
            subprocess.run([prefdata_bin, "ingest", str(src), "--name", "bench-input", "--format", "parquet",
                            "--catalog", str(cat_ds)], check=True, capture_output=True, env=env)
            took, _ = timed([prefdata_bin, "build", str(tmp / "dataset.yaml"), "--catalog", str(cat_ds), "--json"],
                            env, cpu["build_dataset"])
            times["build_dataset"].append(took)
    med = {k: round(statistics.median(v), 3) for k, v in times.items()}
    print(json.dumps({
        "bench": "build_vs_duckdb", "responses": args.prompts * 4, "prompts": args.prompts, "cpus": os.cpu_count(),
        "pipeline": "rank -> pairs(all_pairs, min_margin 0.5) -> curriculum(3)", "pairs": lineage.get("rows_out"),
        "outputs_identical": True, "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "median_s": med, "cpu_s": cpu, "duckdb_query_s": duck_query_s,
        "build_file_vs_duckdb": round(med["build_file"] / med["duckdb"], 2),
        "build_dataset_vs_duckdb": round(med["build_dataset"] / med["duckdb"], 2)}))


if __name__ == "__main__":
    main()
