"""Build runner: a recipe + a catalog -> one new catalog version, with lineage.

source (catalog dataset, or a file ingested and stored as `<name>-source`, or shared with another recipe's
ingested source holding the same rows) -> steps in order -> the
contract check and the row-accounting identity after every step -> one `cat.write`. Nothing is written
until every step has succeeded, so a failed build leaves no version behind (the file source too is
stored only once the build has succeeded, and only when its content differs from the latest stored
version). Same recipe + same input versions => identical rows and content hash: steps are pure and
every random choice is seeded from the recipe."""
from __future__ import annotations

import importlib
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

import prefdata
from builders.base import Built, StepContext
from prefdata.errors import DatasetNotFound, RecipeError, SchemaError
from prefdata.extras import needs_train
from prefdata.recipe import Recipe, RecipeStep, canonical_config, check_kind, load_recipe
from prefdata.schema import conform, contract, validate

DEFAULT_RECIPE = Path(prefdata.__file__).resolve().parents[1] / "examples" / "recipes" / "default.yaml"
ENGINES = ("local", "ray")


class AccountingError(RuntimeError):
    """A step's rows_in != rows_kept + sum(drops): a bug in the step, never a user error."""


@dataclass
class StepReport:
    step: str
    label: str
    config: dict[str, Any]
    kind: str
    rows_in: int
    rows_kept: int
    drops: dict[str, int]
    rows_out: int
    info: dict[str, Any]
    summary: str
    seconds: float
    by_source: dict[str, dict[str, Any]] | None = None   # mixture builds: rows_in / rows_kept / drops per source


@dataclass
class BuildResult:
    name: str
    version: int
    content_hash: str
    rows: int
    kind: str
    steps: list[StepReport]
    inputs: list[str]
    config_sha256: str
    recipe: str
    written: bool = True                     # False: the latest version already holds this exact build
    source_version_written: bool = False
    lineage: dict[str, Any] = field(default_factory=dict)
    length_bias: dict[str, Any] | None = None   # pairs outputs: builders/length_bias.summarize


def table_kind(columns: list[str]) -> str:
    if "chosen" in columns and "rejected" in columns:
        return "pairs"
    if "responses" in columns and "ranks" in columns:
        return "lists"
    if "response" not in columns:
        return "prompts"
    return "responses"


def _open(catalog):
    if hasattr(catalog, "write") and hasattr(catalog, "read"):
        return catalog
    from catalog import Catalog
    return Catalog.open(Path(catalog))


@dataclass
class _Source:
    table: pa.Table | None           # None: a catalog dataset not read yet (see `dataset`)
    kind: str
    name: str
    version: int | None              # None: a file source whose new version is written after the build
    line: str
    lineage: dict[str, Any] = field(default_factory=dict)
    dataset: Any = None              # the Lance dataset of a catalog source (streamed by partitioned builds)
    rows: int = 0
    written: bool = False            # a new source version was stored by this build
    parts: list[_Source] = field(default_factory=list)   # a mixture's entries (prefdata/mixture.py)
    mix: StepReport | None = None    # a mixture's choice of prompts, reported as the build's first step
    sources: dict[str, Any] = field(default_factory=dict)   # a mixture's per-source lineage
    staged: Any = None               # a new file source's files, written while the steps run (Future of a Staged)

    def read(self) -> pa.Table:
        return self.table if self.table is not None else self.dataset.to_table()


def _latest(cat, name: str) -> dict | None:
    if name not in cat.names():
        return None
    versions = cat.versions(name)
    return versions[-1] if versions else None


def _load_source(recipe: Recipe, cat) -> _Source:
    if recipe.sources:
        from prefdata.mixture import load_mixture
        return load_mixture(recipe, cat)
    return load_one(recipe.source, recipe.source_path, f"{recipe.name}-source", cat)


def load_one(src, path: Path | None, store_name: str, cat) -> _Source:
    """One source spec: a catalog dataset, or a file ingested (to be stored as `store_name` once the build has
    succeeded, unless its rows are already stored)."""
    from catalog import parse_ref

    if src.dataset is not None:
        name, ref = parse_ref(src.dataset)
        if name not in cat.names():
            raise DatasetNotFound(name)
        ds = cat.dataset(name, ref)          # VersionNotFound for a bad version or tag
        version, rows = ds.version, ds.count_rows()   # a tag: lineage records the version it pointed to
        return _Source(None, table_kind(ds.schema.names), name, version, f"{name}@{version} ({rows:,} rows)",
                       dataset=ds, rows=rows)

    from catalog.hashing import content_hash
    from prefdata.ingest import read_source

    # media bytes in the source (Pick-a-Pic jpg_0/jpg_1) are stored content-addressed under the catalog,
    # where the dataset's relative media URIs resolve
    root = getattr(cat, "root", None)
    res = read_source(path, format=src.format, mapping=src.mapping, carry=src.carry,
                      media_dir=Path(root) if root is not None else None)
    name = store_name
    latest = _latest(cat, name)
    # the rows are hashed here only when a stored source could hold them; else the write hashes them while
    # Lance writes (the same table object: hashed once either way)
    stored = latest is not None or any(n.endswith("-source") for n in cat.names())
    chash = content_hash(res.table) if stored else None
    same = latest is not None and latest.get("content_hash") == chash
    shared = None if same or chash is None else shared_source(cat, chash)
    dropped = sum(res.drops.values())
    prompts = pc.count_distinct(res.table.column("prompt_id")).as_py() if res.table.num_rows else 0
    line = f"{res.format} {path.name} ({prompts:,} prompts) → {res.table.num_rows:,} {res.kind} rows"
    line += drops_text(res.drops)
    lineage = {"builder": "ingest", "format": res.format, "source": str(path), "config":
               {"format": res.format, "mapping": src.mapping or {}, "carry": src.carry or []}, "rows_in": res.rows_in,
               "rows_kept": res.rows_in - dropped, "rows_dropped": dict(res.drops), "info": res.info}
    if shared is not None:   # another recipe's ingest of the same rows: used as is, not stored again
        line += f" · same rows as {shared[0]}@{shared[1]} (shared, not copied)"
        return _Source(res.table, res.kind, shared[0], shared[1], line, lineage, rows=res.table.num_rows)
    return _Source(res.table, res.kind, name, latest["version"] if same else None, line, lineage,
                   rows=res.table.num_rows)


def shared_source(cat, chash: str) -> tuple[str, int] | None:
    """An ingested source already in the catalog with exactly these rows (content hash), from any recipe: a
    recipe reading the same file shares it instead of storing a copy as its own `<name>-source`."""
    for name in cat.names():
        if name.endswith("-source"):
            for v in reversed(cat.versions(name)):
                if v.get("content_hash") == chash:
                    return name, int(v["version"])
    return None


def _step_runner(engine: str):
    if engine not in ENGINES:
        raise RecipeError(f"unknown engine {engine!r}; known engines: {', '.join(ENGINES)}")
    if engine == "local":
        return lambda step, frame, ctx: step.fn(frame, step.config, ctx)
    try:   # the Ray engine (prefdata/engine_ray.py) runs the same step function on Ray Data
        mod = importlib.import_module("prefdata.engine_ray")
        run_step = mod.run_step
    except (ImportError, AttributeError):
        raise RecipeError("engine 'ray' not available") from None
    return lambda step, frame, ctx: run_step(step.name, step.fn, frame, step.config, ctx)


def _label(step: RecipeStep) -> str:
    label = getattr(step.config, "label", None)
    if callable(label):
        return label()
    items = step.config.model_dump(mode="json", exclude_defaults=True)
    return ", ".join(f"{k} {v}" for k, v in items.items()) or "defaults"


def check_contract(df: pl.DataFrame, kind: str, where: str) -> pl.DataFrame:
    """Check `df` against the `kind` contract. Presence and types go through prefdata.schema.validate (on
    an empty slice); the value checks validate makes (non-null columns, finite floats, margin >= 0, list
    lengths) run here on the polars columns, so no string column is converted to Arrow just to be looked
    at. A table whose types are merely inexact (int64 stage, ...) is conformed once. Raises SchemaError
    naming the step, the column and the first offending row."""
    try:
        validate(df.head(0).to_arrow(), kind)
    except SchemaError:
        try:
            df = pl.from_arrow(conform(df.to_arrow(), kind))
            validate(df.head(0).to_arrow(), kind)
        except SchemaError as e:
            raise SchemaError(f"{where}: {e}", column=e.column, expected=e.expected) from None

    def fail(msg: str, column: str, expected: str, bad: pl.Series) -> None:
        raise SchemaError(f"{where}: {msg}", column=column, expected=expected, row=int(bad.arg_true()[0]))

    for spec, _required, non_null in contract(kind):
        if spec.name not in df.columns:
            continue
        col = df[spec.name]
        if non_null and col.null_count():
            fail(f"column {spec.name!r} must not be null", spec.name, str(spec.type), col.is_null())
        if col.dtype.is_float():
            bad = (~col.is_finite()).fill_null(False)
            if bad.any():
                fail(f"column {spec.name!r} holds NaN or inf (expected finite float64)", spec.name,
                     "finite float64", bad)
    if kind == "pairs":
        neg = (df["margin"] < 0).fill_null(False)
        if neg.any():
            fail("column 'margin' must be >= 0 (score_chosen - score_rejected)", "margin", "float64 >= 0", neg)
    if kind == "lists":
        n = df["responses"].list.len()
        for c in ("response_ids", "scores", "ranks"):
            bad = (df[c].list.len() != n).fill_null(True)
            if bad.any():
                fail(f"column {c!r} list length differs from 'responses'", c, "same length as responses", bad)
    return df


def run_step(step: RecipeStep, frame: pl.LazyFrame, kind: str, ctx: StepContext, runner, *,
             file: str, by_source: bool = False) -> tuple[pl.DataFrame, StepReport]:
    """Run one step, check its output contract and its row accounting; return the output frame. `by_source`
    (mixture builds): the accounting is also split by the `source` column (prefdata/mixture.py)."""
    check_kind(step, kind, file)
    t0 = time.perf_counter()
    with needs_train(f"{step.yaml_path} ({step.name})"):     # a model step (generate, score with a model)
        built: Built = runner(step, frame, ctx)
    df = built.frame.collect() if isinstance(built.frame, pl.LazyFrame) else built.frame
    rows_in = built.rows_in if built.rows_in is not None else frame.select(pl.len()).collect().item()
    dropped = sum(built.drops.values())
    rows_kept = built.rows_kept if built.rows_kept is not None else rows_in - dropped
    if rows_in != rows_kept + dropped:
        raise AccountingError(f"{step.yaml_path}: rows_in {rows_in} != rows_kept {rows_kept} + dropped {dropped} "
                              f"{built.drops}")
    df = check_contract(df, built.kind, f"{step.yaml_path} output")
    report = StepReport(step.name, _label(step), step.config.model_dump(mode="json"), built.kind, rows_in,
                        rows_kept, dict(built.drops), df.height, built.info, built.summary,
                        round(time.perf_counter() - t0, 3))
    if by_source:
        from prefdata.mixture import step_by_source
        report.by_source = step_by_source(step, frame, built, lambda f: runner(step, f, ctx))
    return df, report


def _totals(source_rows: int, source_kind: str, reports: list[StepReport]) -> tuple[int, dict[str, int]]:
    """Rows kept and dropped counted at the source's granularity, through the steps that keep it (a
    responses -> pairs step still counts responses); later steps' accounting is in steps[]."""
    drops: dict[str, int] = {}
    kind = source_kind
    for r in reports:
        if kind != source_kind:
            break
        for reason, n in r.drops.items():
            drops[f"{r.step}: {reason}"] = drops.get(f"{r.step}: {reason}", 0) + n
        kind = r.kind
    return source_rows - sum(drops.values()), drops


def run_recipe(recipe_path: Path | str | None, catalog, *, engine: str = "local", progress: bool = True,
               console=None, partitions: int | None = None) -> BuildResult:
    """Build `recipe_path` (None: the bundled default recipe) into `catalog` (a Catalog or its path).
    `partitions` overrides the recipe's `partitions:` (None: the recipe's, default auto); with engine
    "local" and more than one partition the build runs out of core (prefdata/partitioned.py)."""
    from rich.console import Console

    from prefdata.partitioned import plan_partitions

    console = console or Console(stderr=False, quiet=not progress)
    recipe_path = Path(recipe_path) if recipe_path is not None else DEFAULT_RECIPE
    recipe = load_recipe(recipe_path)
    file = _shown_path(recipe_path)
    runner = _step_runner(engine)
    if partitions is not None and (isinstance(partitions, bool) or not isinstance(partitions, int)
                                   or partitions < 1):
        raise RecipeError(f"partitions must be a positive integer, got {partitions!r}", path="partitions", file=file)
    requested = partitions if partitions is not None else recipe.partitions
    cat = _open(catalog)
    config_json, config_sha = canonical_config(recipe)
    shown = lambda a, b: console.print(f"  {a:<11} {b}", highlight=False, soft_wrap=True)   # noqa: E731

    with console.status(f"reading source of {recipe.name}", spinner="dots") if progress else nullcontext():
        source = _load_source(recipe, cat)
    if engine == "local":
        n_parts, how = plan_partitions(recipe.steps, source.rows, requested, file=file)
    else:
        n_parts, how = 1, f"engine {engine}"
    shown("source", source.line + (f" · {how}" if n_parts > 1 else ""))
    if source.mix is not None:
        shown("mix", f"{source.mix.label} · {source.mix.summary}{drops_text(source.mix.drops)}")
    # model steps (generate, score) commit shards here as they finish, so a killed build resumes where it
    # stopped; the folder is removed once the dataset version is written
    step_work = Path(getattr(cat, "root", Path.cwd())) / "_work" / recipe.name / "steps"
    ctx = StepContext(base_dir=recipe.base_dir or Path.cwd(), work_dir=step_work, catalog=cat, seed=recipe.seed,
                      progress=progress)
    status = (lambda msg: console.status(msg, spinner="dots")) if progress else (lambda msg: nullcontext())
    if n_parts > 1:
        with _tidy_on_failure(step_work, console, source):
            _stage_source(cat, source)
            return _run_partitioned(recipe, cat, source, n_parts, ctx, runner, file, config_json, config_sha,
                                    console, shown, status, engine)

    df, kind, reports = pl.from_arrow(source.read()), source.kind, [source.mix] if source.mix else []
    mixture = bool(recipe.sources)
    if source.version is not None:
        source.table = None            # already stored: free it, only the frame is needed now
    if recipe.steps and _prompt_local(recipe.steps[0]):
        from prefdata.partitioned import group_prompts
        df = group_prompts(df)         # the order a partitioned build gives (a no-op for contiguous prompts)
    with _tidy_on_failure(step_work, console, source):
        _stage_source(cat, source)
        for step in recipe.steps:
            with status(f"{step.name}: {_label(step)}"):
                df, report = run_step(step, df.lazy(), kind, ctx, runner, file=file, by_source=mixture)
            kind = report.kind
            reports.append(report)
            shown(step.name, f"{report.label} · {report.summary or f'{report.rows_out:,} rows'}"
                             f"{drops_text(report.drops, report.summary)}  [dim]({report.seconds:.2f}s)[/]")

    _store_source(cat, recipe, source)
    bias = _length_bias(kind, df)
    table = df.to_arrow()
    del df
    inputs, message, lineage = _lineage(recipe, source, reports, file, config_json, config_sha, engine,
                                        table.num_rows, n_parts, bias)
    from catalog.hashing import content_hash

    same = identical_build(cat, recipe.name, config_sha, inputs, lambda: content_hash(table))
    if same is not None:
        latest = _latest(cat, recipe.name)["version"]
        version, written = same, False
        verb = "unchanged" if same == latest else "unchanged: identical to"   # an older version, not the latest
    else:
        version, written, verb = cat.write(recipe.name, table, message=message, lineage=lineage), True, "wrote"
    shutil.rmtree(step_work, ignore_errors=True)
    return _finish(cat, recipe, version, written, verb, table.num_rows, kind, reports, inputs, config_sha, file,
                   source, console, bias)


def tidy_work(work: Path) -> list[tuple[Path, int]]:
    """After a failed build: remove the empty folders under the build's `_work/<name>/steps` (and those above it
    up to `_work`, when empty); returns the folders kept, each with its finished shards (what a rerun resumes)."""
    if not work.exists():
        return []
    for d in sorted((p for p in work.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()
    kept = [(d, len(list(d.glob("shard-*")))) for d in sorted(work.iterdir()) if d.is_dir()]
    for d in (work, work.parent, work.parent.parent):
        if d.exists() and not any(d.iterdir()):
            d.rmdir()
    return kept


@contextmanager
def _tidy_on_failure(work: Path, console, source: _Source | None = None):
    """A failing step leaves no empty work folders; one holding finished shards is kept and said (resume). The
    files of a new source staged meanwhile are deleted (never committed, so never visible)."""
    try:
        yield
    except BaseException:
        for part in (source.parts or [source]) if source is not None else []:
            if part.staged is not None and part.staged.exception() is None:
                part.staged.result().discard()
        for d, shards in tidy_work(work):
            console.print(f"  kept {d} ({shards} finished shard(s)): the next build of this recipe resumes from "
                          "them; delete the folder to start over", highlight=False, soft_wrap=True)
        raise


def drops_text(drops: dict[str, int], summary: str = "") -> str:
    """` · dropped N rows: n1 reason1, n2 reason2` (every reason with its count, where the step runs; empty when
    nothing was dropped or the step's own summary already counts its drops)."""
    total = sum(drops.values())
    if not total or " · dropped " in summary:
        return ""
    return f" · dropped {total:,} rows: " + ", ".join(f"{n:,} {why}" for why, n in drops.items() if n)


def _prompt_local(step: RecipeStep) -> bool:
    from prefdata.partitioned import runs_by_partition
    return runs_by_partition(step.name, step.config)


def _store_source(cat, recipe: Recipe, source: _Source) -> None:
    """A new (or changed) file source is stored now that the build has succeeded (each entry of a mixture)."""
    if source.parts:
        for part in source.parts:
            _store_source(cat, recipe, part)
        source.written = any(part.written for part in source.parts)
        return
    source.written = source.version is None
    if source.written and source.staged is not None:
        source.version = source.staged.result().commit()
    elif source.written:
        source.version = cat.write(source.name, source.table, message=f"ingest {source.lineage.get('source')}",
                                   lineage=source.lineage)


def _stage_source(cat, source: _Source) -> None:
    """Start writing (and hashing) a new file source in the background, so that work overlaps the steps; it is
    committed by _store_source once the build has succeeded, deleted if the build fails."""
    if not hasattr(cat, "stage"):
        return
    for part in source.parts or [source]:
        if part.version is None and part.table is not None and part.staged is None:
            pool = ThreadPoolExecutor(1, thread_name_prefix="prefdata-stage")
            part.staged = pool.submit(cat.stage, part.name, part.table,
                                      message=f"ingest {part.lineage.get('source')}", lineage=part.lineage)
            pool.shutdown(wait=False)


def _length_bias(kind: str, df: pl.DataFrame) -> dict[str, Any] | None:
    """A pairs output's length bias (builders/length_bias.py), for the summary and lineage."""
    if kind != "pairs":
        return None
    from builders import length_bias
    return length_bias.summarize(length_bias.pairs_counts(df))


def _lineage(recipe: Recipe, source: _Source, reports: list[StepReport], file: str, config_json: str,
             config_sha: str, engine: str, rows_out: int, n_parts: int,
             bias: dict[str, Any] | None = None) -> tuple[list[str], str, dict]:
    rows_kept, drops = _totals(reports[0].rows_in, source.kind, reports)
    inputs = [f"{p.name}@{p.version}" for p in (source.parts or [source])]
    message = f"build {recipe.name} from {', '.join(inputs)} with {file}"
    steps = [{"step": r.step, "config": r.config, "rows_in": r.rows_in, "rows_kept": r.rows_kept,
              "drops": r.drops, "rows_out": r.rows_out, "info": r.info} for r in reports]
    for entry, r in zip(steps, reports, strict=True):
        if r.by_source is not None:
            entry["by_source"] = r.by_source
    lineage = {"builder": "recipe", "recipe": file, "config": config_json,
               "config_sha256": config_sha, "inputs": inputs, "engine": engine, "partitions": n_parts,
               "steps": steps, "rows_in": reports[0].rows_in, "rows_kept": rows_kept, "rows_dropped": drops,
               "drops": drops, "rows_out": rows_out}
    if source.parts:
        from prefdata.mixture import source_lineage
        lineage["sources"] = source_lineage(source, reports)
    if bias is not None:
        lineage["length_bias"] = bias
    return inputs, message, lineage


def identical_build(cat, name: str, config_sha: str, inputs: list[str], chash: str | Callable[[], str]) -> int | None:
    """The newest version of `name` that already holds this build (same recipe config, same inputs, same rows),
    whichever version is latest: a reference pass or another build after it does not make a rebuild new.
    `chash` may be a function, called only when `name` has versions (a first build is not hashed twice)."""
    if name not in cat.names():
        return None
    chash = chash() if callable(chash) else chash
    for v in reversed(cat.versions(name)):
        if v.get("content_hash") == chash:
            lin = cat.lineage(name, v["version"])
            if lin.get("config_sha256") == config_sha and lin.get("inputs") == inputs:
                return int(v["version"])
    return None


def _same_build(cat, name: str, config_sha: str, inputs: list[str], chash: str | None) -> bool:
    """The latest version already holds this build: same recipe config, same inputs (and same rows, when
    `chash` is given)."""
    latest = _latest(cat, name)
    if latest is None or (chash is not None and latest.get("content_hash") != chash):
        return False
    lin = cat.lineage(name, latest["version"])
    return lin.get("config_sha256") == config_sha and lin.get("inputs") == inputs


def _finish(cat, recipe: Recipe, version: int, written: bool, verb: str, rows: int, kind: str,
            reports: list[StepReport], inputs: list[str], config_sha: str, file: str, source: _Source,
            console, bias: dict[str, Any] | None = None) -> BuildResult:
    rec = cat.lineage(recipe.name, version)
    chash = rec.get("content_hash", "")
    if bias is not None:
        from builders import length_bias
        console.print(f"  {'length':<11} {length_bias.line(bias)}", highlight=False, soft_wrap=True)
    console.print(f"  {verb} [bold]{recipe.name}@{version}[/]  ({rows:,} {kind} rows, content "
                  f"{chash[:8]}…, recipe {file}, config {config_sha[:8]}…)", highlight=False, soft_wrap=True)
    return BuildResult(recipe.name, version, chash, rows, kind, reports, inputs, config_sha, file,
                       written, source.written, rec, bias)


def _run_partitioned(recipe: Recipe, cat, source: _Source, n_parts: int, ctx: StepContext, runner, file: str,
                     config_json: str, config_sha: str, console, shown, status, engine: str) -> BuildResult:
    """The same build, out of core: see prefdata/partitioned.py for the passes and why the rows, their
    order and the content hash equal the in-memory build's."""
    from prefdata.partitioned import PartitionedBuild, _summary, merge_info, source_batches, streamable_curriculum
    from prefdata.recipe import output_kind

    steps = list(recipe.steps)
    final = steps.pop() if steps and streamable_curriculum(steps[-1]) else None
    kind = source.kind
    for step in recipe.steps:          # kinds are checked up front: a partition must not fail half-way
        check_kind(step, kind, file)
        kind = output_kind(step.config, kind)
    work_root = Path(getattr(cat, "root", Path.cwd())) / "_work"
    with PartitionedBuild(work_root, n_parts) as pb:
        t0 = time.perf_counter()
        with status(f"partitioning {source.rows:,} rows into {n_parts} partitions"):
            pb.split(source_batches(source.table, source.dataset), source.rows)
        if source.version is not None:
            source.table = None
        split_s = round(time.perf_counter() - t0, 3)

        lengths: dict[str, Any] = {}     # length counts of the last step's pairs, summed over partitions

        def one(step, frame, kind):
            df, rep = run_step(step, frame, kind, ctx, runner, file=file, by_source=bool(recipe.sources))
            # keyed steps run as a copy bound to their plan: the YAML path names the step
            if step.yaml_path == steps[-1].yaml_path and rep.kind == "pairs":
                from builders import length_bias
                lengths.update(length_bias.add(lengths, length_bias.pairs_counts(df)))
            return df, rep

        t0 = time.perf_counter()
        with status(f"running {len(steps)} prompt-local step(s) by partition") as st:
            if st is not None and hasattr(st, "update"):
                pb.say = lambda msg: st.update(f"{msg}: {', '.join(s.name for s in steps)}")
            totals, kind = pb.run_local(steps, source.kind, ctx, one, final=final)
        local_s = round(time.perf_counter() - t0, 3)
        reports, in_kind = [source.mix] if source.mix else [], source.kind
        for i, (step, t) in enumerate(zip(steps, totals, strict=True)):
            if t.rows_in != (reports[-1].rows_out if reports else source.rows):
                raise AccountingError(f"{step.yaml_path}: partitions saw {t.rows_in} rows in, expected "
                                      f"{reports[-1].rows_out if reports else source.rows}")
            # a step planned over all prompts (split) reports its plan, not a sum over partitions
            planned = pb.step_reports.get(i)
            info = {**(planned[0] if planned else merge_info(t.infos)), "partitions": n_parts}
            reports.append(StepReport(step.name, _label(step), step.config.model_dump(mode="json"), t.kind,
                                      t.rows_in, t.rows_kept, dict(sorted(t.drops.items())), t.rows_out, info,
                                      planned[1] if planned else _summary(t, in_kind), round(t.seconds, 3),
                                      t.by_source))
            in_kind = t.kind
            shown(step.name, f"{reports[-1].label} · {reports[-1].summary}{drops_text(reports[-1].drops, reports[-1].summary)}"
                             f"  [dim]({t.seconds:.2f}s)[/]")
        rows_out = reports[-1].rows_out if reports else source.rows
        if final is not None:
            _, _, drops, info = pb.curriculum
            rows_in = rows_out
            rows_out = rows_in - sum(drops.values())
            summary = " · ".join(f"stage {i}: {n:,}" for i, n in enumerate(info["stage_sizes"]))
            # its per-row work (difficulty values, stage lookup, the sort by stage) happens in the write phase
            reports.append(StepReport(final.name, _label(final), final.config.model_dump(mode="json"), kind,
                                      rows_in, rows_out, drops, rows_out, {**info, "partitions": n_parts},
                                      summary, 0.0))
            shown(final.name, f"{reports[-1].label} · {summary}{drops_text(drops)}")
        _store_source(cat, recipe, source)
        # measured on the last partition-run step's output: exact unless a final curriculum dropped rows
        # (missing: drop of a null difficulty), then left out rather than reported for other rows
        bias = None
        if lengths and kind == "pairs" and not (final is not None and reports[-1].drops):
            from builders import length_bias
            bias = length_bias.summarize(lengths)
        inputs, message, lineage = _lineage(recipe, source, reports, file, config_json, config_sha, engine,
                                            rows_out, n_parts, bias)
        latest = _latest(cat, recipe.name)
        skip = latest.get("content_hash") if latest and _same_build(cat, recipe.name, config_sha, inputs, None) \
            else None
        with status(f"writing {recipe.name} ({rows_out:,} rows)"):
            if pb.schema is None:      # no partition had input rows: nothing to order
                raise AccountingError("partitioned build produced no partition output")
            # where the time goes (the write phase: ordering, stages, content hash and the Lance write)
            lineage["seconds"] = {"split": split_s, "partitions": local_s}
            version = cat.write_batches(recipe.name, pb.ordered_batches(), schema=pb.schema, message=message,
                                        lineage=lineage, skip_if_hash=skip)
    if version is None:
        version, written, verb = latest["version"], False, "unchanged"
    else:
        written, verb = True, "wrote"
    return _finish(cat, recipe, version, written, verb, rows_out, kind, reports, inputs, config_sha, file, source,
                   console, bias)


def _shown_path(path: Path) -> str:
    """The recipe path as a user recognizes it: relative to the working directory or the repository."""
    p = path.resolve()
    for base in (Path.cwd(), DEFAULT_RECIPE.parents[2]):
        try:
            return str(p.relative_to(base.resolve()))
        except ValueError:
            continue
    return str(path)
