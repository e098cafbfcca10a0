"""Benchmark: rank -> pairs(all_pairs, min_margin 0.5) -> curriculum(3 stages by margin) on synthetic scored
responses (N prompts x 4, seeded random scores in 0.0..10.0 at 0.1 steps, 0.5% null), three ways:
  python  a plain dict-and-loop implementation
  duckdb  one hand-written SQL query
  ours    the public builder API (recipe parse + prefdata.build.run_step: contract validation and row
          accounting after every step); the catalog write of the result is timed separately
Each implementation runs in its own subprocess (peak RSS = that process's ru_maxrss, input included) and
writes its output rows; the parent checks all outputs are identical (same rows, same order) and prints
ONE JSON line. Defaults: 250k prompts (1M responses) for all three, then 2.5M prompts (10M responses) for
duckdb and ours (python extrapolated linearly from 1M). `--prompts N --scales 1` for a quick run."""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
K, MIN_MARGIN, STAGES, SEED = 4, 0.5, 3, 0
OUT_COLS = ["prompt_id", "prompt", "chosen", "rejected", "chosen_id", "rejected_id", "score_chosen",
            "score_rejected", "margin", "stage"]


def make_polars_input(n_prompts: int):
    """The same responses as make_input, built natively in polars (so `ours` never holds an Arrow copy)."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(SEED)
    n = n_prompts * K
    scores = rng.integers(0, 101, n) / 10.0
    null = rng.random(n) < 0.005
    ids = pl.DataFrame({"p": np.repeat(np.arange(n_prompts), K), "j": np.tile(np.arange(K), n_prompts)})
    return ids.select(
        prompt_id=pl.format("p{}", "p"), prompt=pl.format("What is the answer to question {}?", "p"),
        response_id=pl.format("r{}-{}", "p", "j"), response=pl.format("This is candidate answer {}-{}.", "p", "j"),
        score=pl.when(pl.Series(null)).then(None).otherwise(pl.Series(scores)))


def make_input(n_prompts: int):
    """The responses table (pyarrow), identical in every subprocess."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    rng = np.random.default_rng(SEED)
    n = n_prompts * K
    scores = rng.integers(0, 101, n) / 10.0
    null = rng.random(n) < 0.005
    p = np.repeat(np.arange(n_prompts), K).astype(str)
    j = np.tile(np.arange(K), n_prompts).astype(str)
    pid = pa.array(p)
    rid = pc.binary_join_element_wise(pid, pa.array(j), "-")
    return pa.table({
        "prompt_id": pc.binary_join_element_wise("p", pid, ""),
        "prompt": pc.binary_join_element_wise("What is the answer to question ", pid, "?", ""),
        "response_id": pc.binary_join_element_wise("r", rid, ""),
        "response": pc.binary_join_element_wise("This is candidate answer ", rid, ".", ""),
        "score": pa.array(np.where(null, np.nan, scores), mask=null),
    })


# ------------------------------------------------------------------------------------------ (a) python
def run_python(table):
    rows = table.to_pylist()
    t0 = time.perf_counter()
    groups: dict[str, list[dict]] = {}
    for r in rows:                                   # prompts in first-appearance order (dicts keep order)
        groups.setdefault(r["prompt_id"], []).append(r)
    pairs = []
    for pid, rs in groups.items():
        rs = [r for r in rs if r["score"] is not None and not math.isnan(r["score"])]
        for r in rs:                                 # rank: 1 + number of strictly better responses
            r["rank"] = 1 + sum(o["score"] > r["score"] for o in rs)
        for c in rs:
            for r in rs:
                m = round(c["score"] - r["score"], 12)
                if m > MIN_MARGIN:
                    pairs.append([pid, c["prompt"], c["response"], r["response"], c["response_id"],
                                  r["response_id"], c["score"], r["score"], m])
    n = len(pairs)
    count: dict[float, int] = {}
    for p in pairs:
        count[p[8]] = count.get(p[8], 0) + 1
    stage_of, first = {}, 0
    for m in sorted(count, reverse=True):            # easy (large margin) first; a tie group shares a stage
        last = first + count[m] - 1
        stage_of[m] = min(STAGES - 1, math.floor((first + last) / 2 * STAGES / n))
        first = last + 1
    for p in pairs:
        p.append(stage_of[p[8]])
    pairs.sort(key=lambda p: p[9])                   # stable: input order inside a stage
    elapsed = time.perf_counter() - t0
    import pyarrow as pa
    cols = list(zip(*pairs, strict=True)) if pairs else [[] for _ in OUT_COLS]
    return pa.table({c: list(v) for c, v in zip(OUT_COLS, cols, strict=True)}), elapsed, {}


# ------------------------------------------------------------------------------------------ (b) duckdb
SQL = f"""
WITH valid AS (
  SELECT *, min(row) OVER (PARTITION BY prompt_id) AS prow,
         rank() OVER (PARTITION BY prompt_id ORDER BY score DESC) AS rnk
  FROM resp WHERE score IS NOT NULL AND NOT isnan(score)),
p AS (
  SELECT c.prompt_id, c.prompt, c.response AS chosen, r.response AS rejected, c.response_id AS chosen_id,
         r.response_id AS rejected_id, c.score AS score_chosen, r.score AS score_rejected,
         round(c.score - r.score, 12) AS margin, c.prow, c.row AS crow, r.row AS rrow
  FROM valid c JOIN valid r ON c.prompt_id = r.prompt_id AND round(c.score - r.score, 12) > {MIN_MARGIN}),
g AS (SELECT margin, count(*) AS cnt FROM p GROUP BY margin),
gs AS (SELECT margin, cnt,
              coalesce(sum(cnt) OVER (ORDER BY margin DESC ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)
              AS first FROM g),
n AS (SELECT count(*) AS n FROM p)
SELECT p.prompt_id, p.prompt, p.chosen, p.rejected, p.chosen_id, p.rejected_id, p.score_chosen,
       p.score_rejected, p.margin,
       least(floor((gs.first + gs.first + gs.cnt - 1) / 2.0 * {STAGES} / n.n), {STAGES - 1})::INTEGER AS stage
FROM p JOIN gs USING (margin) CROSS JOIN n
ORDER BY stage, p.prow, p.crow, p.rrow
"""


def run_duckdb(table):
    import duckdb
    import pyarrow as pa
    resp = table.append_column("row", pa.array(range(table.num_rows), pa.int64()))  # noqa: F841 (used by SQL)
    # the same 3 GB budget the 10M goal sets for ours; DuckDB spills to disk beyond it
    con = duckdb.connect(config={"memory_limit": "3GB", "temp_directory": tempfile.mkdtemp(prefix="bench-duck-")})
    t0 = time.perf_counter()
    out = con.sql(SQL).to_arrow_table()
    return out, time.perf_counter() - t0, {}


# ---------------------------------------------------------------------------------------------- (c) ours
RECIPE = {"name": "bench", "source": {"dataset": "bench-input"}, "steps": [
    {"rank": {"by": "score", "aggregate": "mean"}},
    {"pairs": {"strategy": "all_pairs", "min_margin": MIN_MARGIN}},
    {"curriculum": {"stages": STAGES, "by": "margin", "order": "easy_to_hard"}}]}


def run_ours(df, catalog_dir: str | None):
    from builders.base import StepContext
    from prefdata.build import run_step
    from prefdata.recipe import parse_recipe

    recipe = parse_recipe(RECIPE)          # parsing imports the step modules: not part of the timing
    t0 = time.perf_counter()
    ctx = StepContext(seed=recipe.seed, progress=False)
    current, kind, steps = df, "responses", {}
    del df
    for step in recipe.steps:
        ts = time.perf_counter()
        current, rep = run_step(step, current.lazy(), kind, ctx, lambda s, f, c: s.fn(f, s.config, c),
                                file="<bench>")
        kind = rep.kind
        steps[step.name] = {"s": round(time.perf_counter() - ts, 3), "rows_out": rep.rows_out,
                            "drops": rep.drops}
    elapsed = time.perf_counter() - t0
    extra = {"steps": steps, "peak_rss_mb_before_write": round(_rss_mb(), 1)}
    if catalog_dir:
        from catalog import Catalog
        tw = time.perf_counter()
        Catalog.open(catalog_dir).write("bench", current.to_arrow(), message="bench")
        extra["catalog_write_s"] = round(time.perf_counter() - tw, 3)
    return current.select(OUT_COLS).to_arrow(), elapsed, extra


def setup_catalog(prompts: int, catalog_dir: str) -> None:
    """The input as a catalog dataset (not timed; its own process, so its memory is not counted)."""
    from catalog import Catalog
    Catalog.open(catalog_dir).write("bench-input", make_polars_input(prompts).to_arrow(), message="bench input")


def run_ours_catalog(catalog_dir: str, out: str | None, partitions: int | None) -> dict:
    """The user's path: `prefdata build` of the recipe from the catalog dataset into the catalog (source read,
    steps, contract checks, row accounting, content hash and the Lance write all timed). Auto partitions
    unless `partitions` is given."""
    import yaml

    from catalog import Catalog
    from prefdata.build import run_recipe

    recipe = Path(catalog_dir) / "bench.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    t0 = time.perf_counter()
    res = run_recipe(recipe, Catalog.open(catalog_dir), progress=False, partitions=partitions)
    elapsed = time.perf_counter() - t0
    peak = _rss_mb()
    if out:   # streamed out for the comparison, after the peak was taken
        import pyarrow.parquet as pq
        ds = Catalog.open(catalog_dir).dataset("bench")
        with pq.ParquetWriter(out, _out_schema(ds.schema)) as w:
            for batch in ds.to_batches(columns=OUT_COLS):
                w.write_batch(batch)
    return {"seconds": round(elapsed, 3), "peak_rss_mb": round(peak, 1), "rows": res.rows,
            "partitions": res.lineage.get("partitions"),
            "steps": {s.step: {"s": s.seconds, "rows_out": s.rows_out} for s in res.steps},
            "phases_s": {**(res.lineage.get("seconds") or {}),
                         "write": round(elapsed - sum((res.lineage.get("seconds") or {}).values()), 3)}}


def _out_schema(schema):
    import pyarrow as pa
    return pa.schema([schema.field(c) for c in OUT_COLS])


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB -> MiB on Linux


# ----------------------------------------------------------------------------------------------- driver
def worker(args) -> None:
    import pyarrow.parquet as pq
    if args.worker == "setup":
        setup_catalog(args.prompts, args.catalog)
        print(json.dumps({"ok": True}))
        return
    if args.worker == "ours_catalog":
        print(json.dumps(run_ours_catalog(args.catalog, args.out, args.partitions)))
        return
    t0 = time.perf_counter()
    table = make_polars_input(args.prompts) if args.worker == "ours" else make_input(args.prompts)
    gen = time.perf_counter() - t0
    if args.worker == "python":
        out, elapsed, extra = run_python(table)
    elif args.worker == "duckdb":
        out, elapsed, extra = run_duckdb(table)
    else:
        out, elapsed, extra = run_ours(table, args.catalog)
    del table
    if args.out:
        pq.write_table(out, args.out)
    print(json.dumps({"seconds": round(elapsed, 3), "peak_rss_mb": round(_rss_mb(), 1), "rows": out.num_rows,
                      "input_gen_s": round(gen, 2), **extra}))


def spawn(impl: str, prompts: int, out: str | None, catalog: str | None, partitions: int | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, "--prompts", str(prompts)]
    if out:
        cmd += ["--out", out]
    if catalog:
        cmd += ["--catalog", catalog]
    if partitions:
        cmd += ["--partitions", str(partitions)]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def same(paths: list[str]) -> bool:
    import pyarrow as pa
    import pyarrow.parquet as pq
    tabs = [pq.read_table(p) for p in paths]
    ref = tabs[0]
    return all(t.num_rows == ref.num_rows and all(
        t.column(c).cast(ref.schema.field(c).type).equals(ref.column(c)) if not pa.types.is_string(
            ref.schema.field(c).type) else t.column(c).cast(pa.string()).equals(ref.column(c).cast(pa.string()))
        for c in OUT_COLS) for t in tabs[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--worker", choices=["python", "duckdb", "ours", "ours_catalog", "setup"])
    ap.add_argument("--partitions", type=int, help="ours_catalog: force this many partitions (default auto)")
    ap.add_argument("--impls", nargs="*", help="implementations to run (default: python duckdb ours "
                    "ours_catalog at scale 1; duckdb ours_catalog above)")
    ap.add_argument("--prompts", type=int, default=250_000)
    ap.add_argument("--scales", type=int, nargs="*", default=[1, 10], help="multiples of --prompts to run")
    ap.add_argument("--out")
    ap.add_argument("--catalog")
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    result: dict = {"bench": "builders", "pipeline": "rank -> pairs(all_pairs, min_margin 0.5) -> curriculum(3)",
                    "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        for scale in args.scales:
            prompts = args.prompts * scale
            key = f"{prompts * K // 1_000_000}M" if prompts * K >= 1_000_000 else f"{prompts * K}"
            runs, outs = {}, []
            impls = args.impls or (["python", "duckdb", "ours", "ours_catalog"] if scale == 1
                                   else ["duckdb", "ours_catalog"])
            for impl in impls:
                out = f"{tmp}/{impl}-{scale}.parquet"
                catalog = f"{tmp}/cat-{scale}-{impl}" if impl.startswith("ours") else None
                if impl == "ours_catalog":
                    spawn("setup", prompts, None, catalog)
                runs[impl] = spawn(impl, prompts, out, catalog, args.partitions if impl == "ours_catalog" else None)
                if "error" not in runs[impl]:
                    outs.append(out)
                if catalog:
                    import shutil
                    shutil.rmtree(catalog, ignore_errors=True)
            runs["outputs_identical"] = len(outs) == len(impls) and same(outs)
            if "python" in runs and "seconds" in runs.get("python", {}):
                result["python_s_per_1M_responses"] = round(runs["python"]["seconds"] / (prompts * K / 1e6), 2)
            if scale != 1 and "python_s_per_1M_responses" in result:
                runs["python_extrapolated_s"] = round(result["python_s_per_1M_responses"] * prompts * K / 1e6, 1)
            d = runs.get("duckdb", {})
            for impl in ("ours", "ours_catalog"):
                o = runs.get(impl, {})
                if "seconds" in o and "seconds" in d:
                    runs[f"{impl}_vs_duckdb_speedup"] = round(d["seconds"] / o["seconds"], 2)
                if "seconds" in o and ("python" in runs or "python_extrapolated_s" in runs):
                    py = runs["python"]["seconds"] if "python" in runs else runs["python_extrapolated_s"]
                    runs[f"{impl}_vs_python_speedup"] = round(py / o["seconds"], 2)
            result[key] = runs
    print(json.dumps(result))


if __name__ == "__main__":
    main()
