"""Out-of-core builds (engine="local"): run a recipe by prompt partitions, spilling to disk, and stream
the result into the catalog, so peak memory is set by one partition, not by the dataset.

When it applies: every step is prompt-local (its result for a prompt depends only on that prompt's rows:
rank unless zscore_mean, pairs, lists, dedup, filter), except that the LAST step may be a quantile
`curriculum` (by margin / rank_gap / a column), whose global part is computed from counts. Partitions:
`partitions: N` in the recipe (or `run_recipe(partitions=N)`), else one per ~1M input rows; a recipe
that cannot run by partitions runs in memory (asking for N > 1 explicitly is a RecipeError).

  pass 0  the source is read in batches (a catalog dataset streams from Lance) and each row goes to
          partition hash(prompt_id) % P, with its source row number; P Arrow IPC files
  pass 1  per partition: rows grouped by prompt (first-appearance order), the prompt-local steps run
          unchanged through build.run_step (contract check + row accounting), and the output is spilled
          with two order keys: the source row of its prompt's first row (__pfirst) and its position in
          the partition's output (__seq), one record batch per range of __pfirst. For a final
          curriculum, the counts of each distinct difficulty value are kept (a few numbers per value).
  stages  the counts of all partitions are added and turned into the quantile stage table, exactly as
          the in-memory curriculum does (builders.curriculum.quantile_table)
  write   range by range: the batches of all partitions for that range are concatenated and sorted
          by (__pfirst, __seq), which is the in-memory order; with a curriculum, each row gets its stage,
          stage-0 rows stream straight to the catalog and later stages are spilled per stage and
          streamed after. One catalog version is written (Catalog.write_batches).

Same rows, same order, same content hash as the in-memory run, for any P: in memory, prompt-local steps
see each prompt's rows together (the runner groups them, see group_prompts) and keep prompts in
first-appearance order, which is exactly the (__pfirst, __seq) order here; the curriculum's stable sort
by stage keeps that order inside a stage. Row accounting is summed over partitions and checked."""
from __future__ import annotations

import math
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from builders.base import StepContext
from prefdata.errors import RecipeError, SchemaError

PROMPT_LOCAL = {"rank", "pairs", "lists", "dedup", "filter"}
# prompt-local once given a small table over ALL prompts (split: each prompt's unit and stratum; near_dedup: its
# LSH band keys and sketch; decontaminate: the prompts that match a benchmark): the table is collected from
# every partition first, the step planned once and the plan applied per partition
KEYED_STEPS = {"split", "near_dedup", "decontaminate"}
ROWS_PER_PARTITION = 1_000_000      # auto: one partition per this many input rows
RANGE_ROWS = 250_000                # source rows per range of the final ordered pass
BATCH_ROWS = 65_536                 # rows per batch read from the source
SRC, PFIRST, SEQ, PART = "__src", "__pfirst", "__seq", "__part"
# spill files are Arrow IPC (measured 3-4x faster to write and read back than parquet here), uncompressed:
# the disk holds about 2x the output size for the duration of the build
COMPRESSION = None


def _writer(path: Path, schema: pa.Schema) -> pa.ipc.RecordBatchFileWriter:
    return pa.ipc.new_file(pa.OSFile(str(path), "wb"), schema,
                           options=pa.ipc.IpcWriteOptions(compression=COMPRESSION))


def _reader(path: Path) -> pa.ipc.RecordBatchFileReader:
    # read into memory (not memory-mapped): mapped pages would count as resident for the whole build
    return pa.ipc.open_file(pa.OSFile(str(path), "rb"))


def _one_batch(tab: pa.Table) -> pa.RecordBatch:
    return tab.combine_chunks().to_batches()[0] if tab.num_rows else pa.RecordBatch.from_pylist([], tab.schema)


def is_prompt_local(step: str, cfg: Any) -> bool:
    """The step's result for a prompt depends on that prompt's rows only."""
    if step == "rank" and getattr(cfg, "aggregate", None) == "zscore_mean":
        return False   # z-scores use the mean/std over the whole dataset
    if step == "near_dedup":
        return getattr(cfg, "on", None) == "response"    # near-duplicate responses within a prompt
    if step == "pairs" and getattr(cfg, "balance_longer", False):
        return False   # evens chosen-longer and chosen-shorter pairs over the whole dataset
    return step in PROMPT_LOCAL


def runs_by_partition(step: str, cfg: Any) -> bool:
    """The step can run partition by partition: prompt-local, or keyed (planned once over all prompts)."""
    return is_prompt_local(step, cfg) or step in KEYED_STEPS


def keyed_functions(step) -> tuple | None:
    """(units(frame, cfg, ctx) -> per-prompt table, plan(units, cfg, ctx) -> plan with .info and .summary,
    bound(plan) -> step function) of a keyed step, or None. A units table with a PFIRST column (the prompt's
    first row in the partition) gets the prompt's source row there instead, so "first" means the same in
    every partitioning."""
    if step.name not in KEYED_STEPS or is_prompt_local(step.name, step.config):
        return None
    if step.name == "split":
        from builders.split import bound_split, plan_split, prompt_units
        return (lambda frame, cfg, ctx: prompt_units(frame, cfg)), plan_split, bound_split
    import importlib
    mod = importlib.import_module(f"builders.{step.name}")
    return mod.prompt_units, getattr(mod, f"plan_{step.name}"), getattr(mod, f"bound_{step.name}")


def streamable_curriculum(step) -> bool:
    """A curriculum whose global part is a quantile table over value counts (kth_easiest ranks within a
    prompt, and `stages: null` needs the largest prompt: it runs in memory)."""
    return step.name == "curriculum" and step.config.by != "kth_easiest"


def whole_table_step(steps) -> Any | None:
    """The first step that keeps a recipe from running by partitions, or None."""
    for i, s in enumerate(steps):
        if runs_by_partition(s.name, s.config) or (i == len(steps) - 1 and streamable_curriculum(s)):
            continue
        return s
    return None


def plan_partitions(steps, rows: int, requested: int | None, *, file: str) -> tuple[int, str]:
    """(P, why). `requested` None = auto (one per ROWS_PER_PARTITION rows when the recipe allows)."""
    blocker = whole_table_step(steps)
    if requested is not None and requested > 1 and blocker is not None:
        raise RecipeError(f"step {blocker.name!r} needs the whole table, so this recipe cannot run by "
                          f"partitions (set partitions: 1 or auto)", path=blocker.yaml_path, file=file)
    if blocker is not None:
        return 1, f"in memory ({blocker.name} needs the whole table)"
    p = requested if requested is not None else max(1, math.ceil(rows / ROWS_PER_PARTITION))
    p = max(1, min(p, rows))
    return p, "in memory" if p == 1 else f"{p} partitions by prompt"


def group_prompts(df: pl.DataFrame) -> pl.DataFrame:
    """Each prompt's rows together, prompts in first-appearance order, rows in input order. A no-op (one
    cheap check) for the usual input, where every ingest format already writes prompts contiguously."""
    from builders.rank import prompt_key

    if "prompt_id" not in df.columns or df.height == 0:
        return df
    if df["prompt_id"].rle_id()[-1] + 1 == df["prompt_id"].n_unique():
        return df
    return df[np.argsort(prompt_key(df).to_numpy(), kind="stable")]


def merge_info(infos: list[dict]) -> dict:
    """Counts add up; *_max/*_min keys combine as such; margin_mean is weighted by pairs; anything else is
    kept when all partitions agree, else listed per partition (never silently dropped)."""
    out: dict[str, Any] = {}
    keys = list(dict.fromkeys(k for i in infos for k in i))
    for k in keys:
        vals = [i[k] for i in infos if k in i]
        nums = [v for v in vals if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(nums) == len(vals) and nums:
            if "max" in k:
                out[k] = max(nums)
            elif "min" in k:
                out[k] = min(nums)
            elif "mean" in k:
                out[k] = None  # recomputed below where the step gives the weights; a mean of means would lie
            else:
                out[k] = sum(nums)
        elif all(v == vals[0] for v in vals):
            out[k] = vals[0]
        elif all(isinstance(v, list) and all(isinstance(x, int | float) for x in v) for v in vals) \
                and len({len(v) for v in vals}) == 1:
            out[k] = [sum(x) for x in zip(*vals, strict=True)]
        else:
            out[k] = {"per_partition": vals}
    if "margin_mean" in out and "pairs" in out:
        w = [(i.get("margin_mean"), i.get("pairs", 0)) for i in infos if i.get("margin_mean") is not None]
        total = sum(n for _, n in w)
        out["margin_mean"] = sum(m * n for m, n in w) / total if total else None
    return out


@dataclass
class _StepTotals:
    """One step's report summed over partitions."""
    rows_in: int = 0
    rows_kept: int = 0
    rows_out: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    infos: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    kind: str = ""
    by_source: dict | None = None      # mixture builds: per-source accounting (prefdata/mixture.py)

    def add(self, rep) -> None:
        self.rows_in += rep.rows_in
        self.rows_kept += rep.rows_kept
        self.rows_out += rep.rows_out
        for r, n in rep.drops.items():
            self.drops[r] = self.drops.get(r, 0) + n
        self.infos.append(rep.info)
        self.seconds += rep.seconds
        self.kind = rep.kind
        if getattr(rep, "by_source", None) is not None:
            from prefdata.mixture import add_by_source
            self.by_source = add_by_source(self.by_source, rep.by_source)


def _summary(t: _StepTotals, in_kind: str) -> str:
    s = f"kept {t.rows_kept:,}"
    dropped = sum(t.drops.values())
    if dropped:
        s += f" · dropped {dropped:,} (" + ", ".join(f"{r}: {n:,}" for r, n in sorted(t.drops.items())) + ")"
    if t.kind != in_kind:
        s += f" → {t.rows_out:,} {t.kind} rows"
    return s


class PartitionedBuild:
    """The passes of one partitioned build, in a scratch directory removed on close."""

    def __init__(self, work_root: Path, partitions: int, *, progress: Callable[[str], None] | None = None):
        self.dir = Path(work_root) / f"build-{uuid.uuid4().hex[:12]}"
        self.dir.mkdir(parents=True)
        self.P = partitions
        self.rows = 0
        self.R = 1
        self.say = progress or (lambda msg: None)
        self.rg: dict[int, list[tuple[int, int, int]]] = {}   # partition -> (range, first row group, count)
        self.schema: pa.Schema | None = None             # output schema (no helper columns)
        self.curriculum = None                           # (step, quantile table) of a final curriculum
        self.stage_sizes: list[int] = []
        self.step_reports: dict[int, tuple[dict, str]] = {}   # step index -> (info, summary) over all partitions

    def __enter__(self) -> PartitionedBuild:
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        try:
            self.dir.parent.rmdir()      # the shared scratch root, when no other build is using it
        except OSError:
            pass

    # ------------------------------------------------------------------------------------ pass 0
    def split(self, batches: Iterable[pa.RecordBatch | pa.Table], total_rows: int) -> None:
        """Source batches (in source order) -> one spill file per partition, rows tagged with __src."""
        self.rows = total_rows
        self.R = max(self.P, math.ceil(total_rows / RANGE_ROWS))
        writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}
        schema: pa.Schema | None = None
        offset = 0
        for batch in batches:
            df = pl.from_arrow(batch)
            if not isinstance(df, pl.DataFrame) or df.height == 0:
                continue
            if "prompt_id" not in df.columns:
                raise SchemaError("partitioned build: the source has no column 'prompt_id' (needed to partition "
                                  "by prompt)", column="prompt_id", expected="string")
            df = df.with_columns(pl.int_range(offset, offset + df.height, dtype=pl.Int64).alias(SRC),
                                 (pl.col("prompt_id").hash(11) % self.P).cast(pl.Int32).alias(PART))
            offset += df.height
            for (p,), sub in df.partition_by(PART, as_dict=True, include_key=False).items():
                tab = sub.to_arrow()
                schema = schema or tab.schema      # every batch of one source converts alike; cast if not
                if p not in writers:
                    writers[p] = _writer(self._input(p), schema)
                writers[p].write_table(tab if tab.schema.equals(schema) else tab.cast(schema))
        for w in writers.values():
            w.close()
        if offset != total_rows:
            raise SchemaError(f"partitioned build: the source yielded {offset} rows, expected {total_rows}")

    def _input(self, p: int) -> Path:
        return self.dir / f"in-{p:05d}.arrow"

    def _spill(self, p: int) -> Path:
        return self.dir / f"out-{p:05d}.arrow"

    # ------------------------------------------------------------------------------------ pass 1
    def run_local(self, steps, kind: str, ctx: StepContext, run_one, *, final=None) -> tuple[list, str]:
        """Run the prompt-local `steps` on every partition (run_one(step, frame, kind) -> (df, StepReport)),
        spill the outputs, and collect the value counts of a `final` curriculum step. Returns the summed
        per-step totals and the output kind."""
        from builders.curriculum import ease_expr

        steps = self._plan_keyed(steps, kind, ctx, run_one)
        totals = [_StepTotals() for _ in steps]
        counts, missing = [], []       # curriculum: value counts; (partition, local row, pfirst, n) of nulls
        out_kind = kind
        for p in range(self.P):
            self.say(f"partition {p + 1}/{self.P}")
            read = self._read_partition(p, keep=False)
            if read is None:                            # no prompt hashed here
                continue
            df, first = read
            frame, k = df.drop(SRC, PFIRST), kind
            del df
            for i, step in enumerate(steps):
                frame, rep = run_one(step, frame.lazy(), k)
                totals[i].add(rep)
                k = rep.kind
            out_kind = k
            out = frame.join(first, on="prompt_id", how="left", maintain_order="left")
            del frame
            if out[PFIRST].null_count():
                raise SchemaError("partitioned build: a step output a prompt_id that is not in its input",
                                  column="prompt_id")
            if not out[PFIRST].is_sorted():
                out = out[np.argsort(out[PFIRST].to_numpy(), kind="stable")]
            out = out.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias(SEQ))
            if final is not None:
                value, ease, shown = ease_expr(out.collect_schema(), final.config)
                narrow = out.select(value.alias("__v"), PFIRST).with_row_index("__i").with_columns(__ease=ease)
                bad = narrow["__v"].is_null() | narrow["__v"].is_nan()
                if bad.any():
                    first_bad = narrow.filter(bad).row(0, named=True)
                    missing.append((p, first_bad["__i"], first_bad[PFIRST], int(bad.sum()), shown))
                counts.append(narrow.filter(~bad).group_by("__ease").agg(cnt=pl.len(), __v=pl.col("__v").first()))
            self._write_spill(p, out)
            del out
        if final is not None:
            self.curriculum = self._plan_curriculum(final, counts, missing)
        return totals, out_kind

    def _read_partition(self, p: int, *, keep: bool) -> tuple[pl.DataFrame, pl.DataFrame] | None:
        """Partition p's input rows, each prompt's rows together (first-appearance order, stable), and the
        source row of each prompt's first row (PFIRST); None when no prompt hashed here."""
        path = self._input(p)
        if not path.exists():
            return None
        df = pl.from_arrow(_reader(path).read_all())
        if not keep:
            path.unlink()
        first = df.group_by("prompt_id").agg(pl.col(SRC).min().alias(PFIRST))
        df = df.join(first, on="prompt_id", how="left", maintain_order="left")
        if not df[PFIRST].is_sorted():              # interleaved prompts: group them (stable)
            df = df[np.argsort(df[PFIRST].to_numpy(), kind="stable")]
        return df, first

    def _plan_keyed(self, steps, kind: str, ctx: StepContext, run_one) -> list:
        """Plan every keyed step over all prompts: the steps before it run on each partition (a second time;
        they are cheap polars steps) to collect its per-prompt table, the plan is made once and the step is
        replaced by one applying that plan. Its report (info, summary) is the plan's, as in memory."""
        import dataclasses

        steps = list(steps)
        for i, step in enumerate(steps):
            keyed = keyed_functions(step)
            if keyed is None:
                continue
            prompt_units, plan_step, bound_step = keyed
            units = []
            for p in range(self.P):
                self.say(f"{step.name}: collecting prompts, partition {p + 1}/{self.P}")
                read = self._read_partition(p, keep=True)
                if read is None:
                    continue
                frame, k = read[0].drop(SRC, PFIRST), kind
                for before in steps[:i]:
                    frame, rep = run_one(before, frame.lazy(), k)
                    k = rep.kind
                u = prompt_units(frame.lazy(), step.config, ctx)
                if PFIRST in u.columns:
                    u = u.drop(PFIRST).join(read[1], on="prompt_id", how="left")
                units.append(u)
            plan = plan_step(pl.concat(units, how="vertical_relaxed"), step.config, ctx)
            self.step_reports[i] = (plan.info, plan.summary)
            steps[i] = dataclasses.replace(step, fn=bound_step(plan))
        return steps

    def _write_spill(self, p: int, out: pl.DataFrame) -> None:
        """The partition's output, one record batch per range of __pfirst (out is sorted by it), so the final
        pass reads exactly one range of every partition at a time."""
        tab = out.to_arrow()
        plain = tab.drop_columns([PFIRST, SEQ]).schema
        if self.schema is None:
            self.schema = plain
        elif not plain.equals(self.schema):
            try:
                tab = tab.cast(pa.schema(list(self.schema) + [tab.schema.field(PFIRST), tab.schema.field(SEQ)]))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as e:
                raise SchemaError(f"partitioned build: partition {p} output has schema {plain}, others have "
                                  f"{self.schema}: {e}") from None
        if not tab.num_rows:      # an empty output needs no file (its schema is kept above)
            return
        ranges = out[PFIRST].to_numpy() * self.R // max(self.rows, 1)
        bounds = np.flatnonzero(np.diff(ranges)) + 1
        starts = np.concatenate([[0], bounds]).astype(int)
        stops = np.concatenate([bounds, [len(ranges)]]).astype(int)
        with _writer(self._spill(p), tab.schema) as w:
            for i, (a, b) in enumerate(zip(starts, stops, strict=True)):
                w.write_batch(_one_batch(tab.slice(a, b - a)))
                self.rg.setdefault(p, []).append((int(ranges[a]), i, 1))

    # ------------------------------------------------------------------------------------ stages
    def _plan_curriculum(self, step, counts: list[pl.DataFrame], missing: list):
        from builders.curriculum import quantile_table

        cfg = step.config
        n_missing = sum(m[3] for m in missing)
        if n_missing and cfg.missing == "error":
            p, local, pf, _, shown = min(missing, key=lambda m: m[2])
            def pfirst(q: int) -> np.ndarray:
                return _reader(self._spill(q)).read_all().column(PFIRST).to_numpy()

            before = sum(int((pfirst(q) < pf).sum()) for q in range(self.P) if self._spill(q).exists())
            first_local = int(np.searchsorted(pfirst(p), pf))
            raise SchemaError(f"curriculum: {shown} is null in {n_missing} row(s) (set missing: drop to drop them "
                              f"with a reason)", column=shown.split(" is ")[0], expected="finite float64",
                              row=before + local - first_local)
        merged = (pl.concat(counts).group_by("__ease").agg(pl.col("cnt").sum(), pl.col("__v").first())
                  if counts else pl.DataFrame(schema={"__ease": pl.Float64, "cnt": pl.UInt32, "__v": pl.Float64}))
        table = quantile_table(merged.select("__ease", pl.col("cnt").cast(pl.Int64), "__v"), cfg.stages)
        ranges = table.group_by("stage").agg(n=pl.col("cnt").sum(), lo=pl.col("__v").min(),
                                             hi=pl.col("__v").max()).sort("stage")
        size_of = dict(zip(ranges["stage"].to_list(), ranges["n"].to_list(), strict=True))
        sizes = [int(size_of.get(s, 0)) for s in range(cfg.stages)]
        info = {"stages": cfg.stages, "stage_sizes": sizes, "by": cfg.by, "order": cfg.order,
                "stage_ranges": {int(s): [lo, hi] for s, _, lo, hi in ranges.iter_rows()}}
        drops = {missing[0][4] + " is null": n_missing} if n_missing else {}
        self.stage_sizes = sizes
        return step, table, drops, info

    # ------------------------------------------------------------------------------------ write
    def ordered_batches(self) -> Iterator[pa.RecordBatch]:
        """The output in the in-memory order, one range at a time (one pass over the spills)."""
        files = {p: _reader(self._spill(p)) for p in self.rg}
        by_range: dict[int, list[tuple[int, int, int]]] = {}
        for p, entries in self.rg.items():
            for r, b0, n in entries:
                by_range.setdefault(r, []).append((p, b0, n))
        stage_writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}
        for r in sorted(by_range):
            tab = pa.Table.from_batches([files[p].get_batch(b) for p, b0, n in by_range[r]
                                         for b in range(b0, b0 + n)])
            if self.curriculum is None:
                yield from self._plain(tab.take(self._order(tab))).to_batches()
                continue
            for s, part in self._staged(tab):
                if s == 0:
                    yield from part.to_batches()
                else:
                    if s not in stage_writers:
                        stage_writers[s] = _writer(self._stage_file(s), self.schema)
                    stage_writers[s].write_table(part)
        for s in sorted(stage_writers):
            stage_writers[s].close()
            f = _reader(self._stage_file(s))
            for b in range(f.num_record_batches):
                yield f.get_batch(b)

    def _stage_file(self, s: int) -> Path:
        return self.dir / f"stage-{s:03d}.arrow"

    @staticmethod
    def _order(tab: pa.Table, *first: np.ndarray) -> np.ndarray:
        """Row order by (*first, __pfirst, __seq): the in-memory order (partitions hold disjoint prompts)."""
        return np.lexsort((tab.column(SEQ).to_numpy(), tab.column(PFIRST).to_numpy(), *first))

    def _plain(self, tab: pa.Table) -> pa.Table:
        tab = tab.drop_columns([PFIRST, SEQ])
        return tab if tab.schema.equals(self.schema) else tab.cast(self.schema)

    def _staged(self, tab: pa.Table) -> Iterator[tuple[int, pa.Table]]:
        """(stage, rows of that stage in order) for one range; rows without a difficulty are left out
        (missing: drop; missing: error was raised before anything was written)."""
        from builders.curriculum import ease_expr, lookup_stages

        step, table, _, _ = self.curriculum
        frame = pl.from_arrow(tab)
        value, ease, _ = ease_expr(frame.collect_schema(), step.config)
        narrow = frame.select(value.alias("__v")).with_columns(__ease=ease)
        del frame
        ok = ~(narrow["__v"].is_null() | narrow["__v"].is_nan()).to_numpy()
        stage = np.full(tab.num_rows, -1, dtype=np.int32)
        stage[ok] = lookup_stages(narrow["__ease"].filter(pl.Series(ok)), table).to_numpy()
        order = self._order(tab, stage)
        order = order[stage[order] >= 0]
        stages = stage[order]
        tab = tab.take(order)
        tab = tab.set_column(tab.schema.get_field_index("stage"), "stage", pa.array(stages, pa.int32()))
        bounds = np.flatnonzero(np.diff(stages)) + 1
        for a, b in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [len(stages)]]), strict=True):
            if b > a:
                yield int(stages[a]), self._plain(tab.slice(int(a), int(b - a)))


def source_batches(table: pa.Table | None, dataset, batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """The source in order: an in-memory table (a file source) or a Lance dataset scanned in batches."""
    if table is not None:
        yield from table.to_batches(max_chunksize=batch_rows)
        return
    yield from dataset.to_batches(batch_size=batch_rows)
