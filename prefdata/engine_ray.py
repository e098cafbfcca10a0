"""`engine="ray"`: run builder steps on Ray Data, with the same rows as the single-node engine.

How a step runs here:
- Steps whose result for a prompt depends only on that prompt's rows (rank with a per-prompt-free
  aggregate, pairs, lists, dedup, filter) are *prompt-local*. The input is cut into partitions of whole
  prompts (contiguous ranges of prompts in input order), written as parquet, read back with
  `ray.data.read_parquet`, and `groupby("__part").map_groups(...)` runs the *same* polars step function
  on each partition in a Ray worker. Outputs go out through `write_parquet`; the driver puts them back in
  partition order. A partition holds many prompts, so the polars code stays vectorized (one call per
  partition, not one per prompt).
- Steps that need the whole table (curriculum quantiles, rank's z-scores over the dataset, model-based
  steps that manage their own shards) run on the driver, unchanged, and say so in their info.
- Row accounting comes back from every partition through a small ledger actor (keyed by partition, so
  a retried task overwrites instead of double counting) and is checked: the partitions' rows_in must add
  up to the input rows, else the run fails loudly.

Same rows, same order: within a partition rows keep their input order, and every prompt-local step orders
its output by prompt (first appearance) then within the prompt, so concatenating partitions in order gives
the single-node output exactly when each prompt's rows are contiguous in the input (every ingest format
writes them so). For interleaved input the rows are the same but their order may differ; the step info
says so (`input_prompts_contiguous: false`).

On a cluster: `ray.init(address=...)` (or RAY_ADDRESS) and a staging URI all nodes can read (a shared
filesystem or object storage, e.g. `s3://bucket/prefix`, passed as `staging=`); see docs/ops.md."""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from builders.base import Built, StepContext
from prefdata.errors import PrefdataError
from prefdata.partitioned import PROMPT_LOCAL, is_prompt_local, merge_info  # noqa: F401 (re-exported)

PART, SEQ, SRC = "__part", "__seq", "__src_row"


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to RAY_ADDRESS / `address`, or start a local instance. Workers need this repo importable:
    locally we pass PYTHONPATH on; on a cluster install prefdata on every node."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    root = str(Path(__file__).resolve().parents[1])
    env = {"PYTHONPATH": os.pathsep.join(p for p in [root, os.environ.get("PYTHONPATH", "")] if p)}
    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": env})


def _prefer_sort_shuffle() -> None:
    """A few big groups (our partitions) shuffle faster by sort than by Ray's default hash shuffle, which
    starts aggregator actors that hold CPUs (on a 2-CPU machine it measured 3-4x slower). A user who set a
    strategy explicitly keeps it."""
    from ray.data import DataContext
    from ray.data.context import ShuffleStrategy

    ctx = DataContext.get_current()
    if ctx.shuffle_strategy == ShuffleStrategy.SHUFFLE_V2:
        ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED


def _ledger_cls():
    import ray

    @ray.remote(num_cpus=0)
    class Ledger:
        def __init__(self):
            self.parts: dict[int, dict] = {}

        def put(self, part: int, record: dict) -> None:
            self.parts[part] = record

        def get(self) -> dict[int, dict]:
            return self.parts

    return Ledger


def _run_partition(batch: pa.Table, *, fn, cfg, ctx: StepContext, ledger) -> pa.Table:
    """One Ray task: the unchanged step function over one partition of whole prompts."""
    import ray

    part = int(batch.column(PART)[0].as_py())
    frame = pl.from_arrow(batch).sort(SRC).drop(PART, SRC)
    built: Built = fn(frame.lazy(), cfg, ctx)
    out = built.frame.collect()
    rows_in = built.rows_in if built.rows_in is not None else frame.height
    ray.get(ledger.put.remote(part, {"rows_in": rows_in, "rows_kept": built.rows_kept, "drops": built.drops,
                                     "rows_out": out.height, "info": built.info, "kind": built.kind}))
    return out.with_columns(pl.lit(part, pl.Int64).alias(PART),
                            pl.int_range(pl.len(), dtype=pl.Int64).alias(SEQ)).to_arrow()


def run_step(step: str, fn, frame: pl.LazyFrame, cfg: Any, ctx: StepContext, *,
             num_partitions: int | None = None, staging: str | Path | None = None) -> Built:
    """Run one recipe step with engine="ray". Same signature and result as calling `fn(frame, cfg, ctx)`."""
    if not is_prompt_local(step, cfg):
        built = fn(frame, cfg, ctx)
        built.info = {**built.info, "engine": "ray (step needs the whole table: ran on the driver)"}
        return built
    import ray
    import ray.data

    ensure_ray()
    _prefer_sort_shuffle()
    df = frame.collect()
    if "prompt_id" not in df.columns:
        from prefdata.errors import SchemaError
        raise SchemaError(f"{step}: input has no column 'prompt_id' (needed to partition by prompt)",
                          column="prompt_id", expected="string")
    if df.height == 0:
        return fn(df.lazy(), cfg, ctx)
    n_prompts = df["prompt_id"].n_unique()
    contiguous = int((df["prompt_id"] != df["prompt_id"].shift(1)).fill_null(True).sum()) == n_prompts
    cpus = int(ray.cluster_resources().get("CPU", 1))
    parts = max(1, min(n_prompts, num_partitions or 2 * cpus))
    # prompt index by first appearance -> contiguous prompt ranges, so partition order = input order
    first = pl.col(SRC).min().over("prompt_id")
    marked = df.with_row_index(SRC).with_columns(
        ((first.rank("dense") - 1) * parts // n_prompts).cast(pl.Int64).alias(PART))
    run_dir = None
    if staging is None:
        run_dir = Path(tempfile.mkdtemp(prefix="prefdata-ray-"))
        stage = str(run_dir)
    else:
        stage = f"{str(staging).rstrip('/')}/{step}-{uuid.uuid4().hex[:8]}"
    try:
        in_uri, out_uri = f"{stage}/in", f"{stage}/out"
        _write_input(marked, in_uri, parts)
        ledger = _ledger_cls().remote()
        wctx = StepContext(base_dir=ctx.base_dir, work_dir=None, catalog=None, seed=ctx.seed, progress=False)
        ds = ray.data.read_parquet(in_uri, override_num_blocks=parts)
        out_ds = ds.groupby(PART, num_partitions=parts).map_groups(_run_partition, batch_format="pyarrow",
                                             fn_kwargs={"fn": fn, "cfg": cfg, "ctx": wctx, "ledger": ledger})
        out_ds.write_parquet(out_uri)
        ledger_parts = ray.get(ledger.get.remote())
        ray.kill(ledger)
        if sorted(ledger_parts) != sorted(marked[PART].unique().to_list()):
            raise PrefdataError(f"ray engine: step {step} reported {len(ledger_parts)} partitions, "
                                f"expected {marked[PART].n_unique()} (a partition was lost)")
        recs = [ledger_parts[p] for p in sorted(ledger_parts)]
        rows_in = sum(r["rows_in"] for r in recs)
        if rows_in != df.height:
            raise PrefdataError(f"ray engine: step {step} saw {rows_in} input rows across partitions, "
                                f"the input has {df.height} (a prompt was split or lost)")
        if sum(r["rows_out"] for r in recs) == 0:
            # nothing survived anywhere: the single-node call gives the exact empty schema and accounting
            return fn(df.lazy(), cfg, ctx)
        out = _read_output(out_uri)
        if out.height != sum(r["rows_out"] for r in recs):
            raise PrefdataError(f"ray engine: step {step} wrote {out.height} rows, partitions reported "
                                f"{sum(r['rows_out'] for r in recs)}")
        out = out.sort([PART, SEQ]).drop(PART, SEQ)
    finally:
        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)
    drops: dict[str, int] = {}
    for r in recs:
        for reason, n in (r["drops"] or {}).items():
            drops[reason] = drops.get(reason, 0) + n
    kept = [r["rows_kept"] for r in recs]
    info = merge_info([r["info"] or {} for r in recs])
    if "margin_mean" in info and "margin" in out.columns:
        info["margin_mean"] = float(out["margin"].mean()) if out.height else None
    info.update(engine="ray", partitions=len(recs), input_prompts_contiguous=contiguous)
    summary = f"{out.height:,} rows from {len(recs)} Ray partitions"
    if not contiguous:
        summary += " · input prompts not contiguous: same rows as engine=local, order may differ"
    return Built(out.lazy(), recs[0]["kind"], drops=dict(sorted(drops.items())), rows_in=rows_in,
                 rows_kept=None if any(k is None for k in kept) else sum(kept), info=info, summary=summary)


def _write_input(marked: pl.DataFrame, uri: str, parts: int) -> None:
    """One parquet file per partition (so a read task never straddles partitions needlessly)."""
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), uri)
    fs.create_dir(path, recursive=True)
    for p, sub in marked.partition_by(PART, as_dict=True, maintain_order=True).items():
        key = p[0] if isinstance(p, tuple) else p
        pq.write_table(sub.to_arrow(), f"{path}/part-{int(key):05d}.parquet", filesystem=fs)


def _read_output(uri: str) -> pl.DataFrame:
    import pyarrow.dataset as pads

    ds = pads.dataset(uri, format="parquet")
    return pl.from_arrow(ds.to_table())
