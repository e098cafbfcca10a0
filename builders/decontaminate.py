"""`decontaminate` step: drop (or flag) prompts that share a word n-gram with a benchmark's prompts.

```yaml
- decontaminate:
    ngram: 13                     # word n-gram size (default 13)
    action: drop                  # drop | flag (flag: a `contamination` column, nothing dropped)
    benchmarks:
      - {name: hygiene-bench, path: ../data/hygiene_bench_prompts.jsonl, text: prompt, id: id}
      - {name: other, path: other.parquet, text: question, id: null}     # id null: the 1-based row number
```
A benchmark is a file given by `path` (relative to the recipe file): JSON Lines, parquet (`.parquet` / `.pq`),
or a Hugging Face `datasets` folder (`save_to_disk` output, or a folder of data files); `format` (jsonl |
parquet | hf) overrides the guess. `text` names the column with the benchmark prompt, `id` the item id
column (null: the row number). A missing file is a RecipeError at parse time naming the YAML path; a
missing column, a null text or id, or a repeated id is an error naming the file (and row).

Matching (builders/shingles.py): the prompt and every benchmark item are normalized the same way (NFKC,
lowercase, punctuation and symbols -> space, whitespace runs -> one space, trimmed) and cut into word
n-grams; a prompt is contaminated when it shares at least one n-gram with some item. A text with fewer than
`ngram` words is one shingle of all its words, so a short prompt matches a short item only when their
normalized texts are equal, and a short item never matches inside a longer prompt. n-grams are compared by
their stable 64-bit hashes (a false match needs a 2^-64 collision). When a prompt matches several items,
the one sharing the most distinct n-grams is named (ties: the benchmark listed first, then the earlier
item).

`action: drop`: every row of a contaminated prompt is dropped with the reason `<n>-gram overlap with
<benchmark> item <id>`. `action: flag`: nothing is dropped; the `column` (default `contamination`) holds
`<benchmark>:<id>` for contaminated prompts, null otherwise. The step info (and so the lineage) has per
benchmark: items, items_matched, prompts, rows.

The join is a polars hash join of the prompts' n-gram hashes against the benchmarks' (which are read and
hashed once per process), in slices of prompts. Partitioned builds: keyed, like `split` — each partition
gives its matched prompts, the report is made once over all of them and the plan applied per partition."""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import Field, field_validator, model_validator

from builders.base import Built, StepConfig, StepContext
from builders.keyed import bind_plan, marked_result, with_prompt_columns
from builders.shingles import shingle_hashes
from builders.split import _kind as table_kind
from prefdata.errors import PrefdataError, SchemaError
from prefdata.model_paths import candidate_path

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
ROWS, BENCH, POS, SHARED, LABEL, DROP = "__rows", "__bench", "__pos", "__shared", "__label", "__drop"
PROMPTS_PER_SLICE = 100_000


class BenchmarkSpec(StepConfig):
    """One benchmark of a decontaminate step (frozen, unknown keys are an error, like a step config)."""
    name: str
    path: str
    text: str = "prompt"
    id: str | None = "id"
    format: Literal["jsonl", "parquet", "hf"] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a benchmark name (letters, digits, '.', '_', '-')")
        return v

    def data_path_fields(self) -> dict[str, str]:
        return {"path": "a benchmark prompt file (JSON Lines or parquet) or a datasets folder"}

    def container(self, path: Path) -> str:
        if self.format is not None:
            return self.format
        if path.is_dir():
            return "hf"
        return "parquet" if path.suffix.lower() in (".parquet", ".pq") else "jsonl"


class DecontaminateConfig(StepConfig):
    output_kind: ClassVar[str | None] = None
    benchmarks: list[BenchmarkSpec] = Field(min_length=1)
    ngram: int = Field(13, ge=1, le=64)
    action: Literal["drop", "flag"] = "drop"
    column: str = "contamination"                  # action flag: the column written

    @model_validator(mode="after")
    def _check(self):
        names = [b.name for b in self.benchmarks]
        if len(set(names)) != len(names):
            raise ValueError(f"benchmark names must differ, got {names}")
        if not self.column.strip():
            raise ValueError("column must name a column")
        return self

    def label(self) -> str:
        names = ", ".join(b.name for b in self.benchmarks)
        return f"{self.ngram}-gram overlap with {names}{', flag only' if self.action == 'flag' else ''}"


# ------------------------------------------------------------------------------ benchmark n-grams

@dataclass(frozen=True)
class BenchNgrams:
    ngrams: pl.DataFrame            # h (uint64), __bench (uint16), __pos (uint32): distinct rows
    ids: list[pl.Series]            # per benchmark: item id by position (string)


def _read(spec: BenchmarkSpec, path: Path) -> pl.DataFrame:
    """The benchmark's text and id columns (id: the row number when spec.id is null)."""
    kind = spec.container(path)
    cols = [spec.text] + ([spec.id] if spec.id is not None else [])
    try:
        if kind == "hf":
            import datasets

            ds = datasets.load_from_disk(str(path)) if (path / "state.json").exists() else \
                datasets.load_dataset(str(path), split="train")
            df = pl.from_arrow(ds.with_format("arrow")[:])
        elif kind == "parquet":
            df = pl.read_parquet(path)
        else:
            df = pl.read_ndjson(path, infer_schema_length=None)
    except (OSError, ValueError, pl.exceptions.PolarsError) as e:
        raise PrefdataError(f"{path}: benchmark {spec.name!r} is not a readable {kind} source: {e}") from None
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise SchemaError(f"benchmark {spec.name!r} has no column {missing[0]!r} (columns: {', '.join(df.columns)})",
                          column=missing[0], source=str(path))
    ids = pl.col(spec.id).cast(pl.String) if spec.id is not None else pl.int_range(1, pl.len() + 1).cast(pl.String)
    df = df.select(pl.col(spec.text).cast(pl.String).alias("text"), ids.alias("id"))
    for col, what in (("text", spec.text), ("id", spec.id)):
        if df[col].null_count():
            raise SchemaError(f"benchmark {spec.name!r}: column {what!r} is null", column=what,
                              row=int(df[col].is_null().arg_true()[0]) + 1, source=str(path))
    dup = ~df["id"].is_first_distinct()
    if dup.any():
        first = int(dup.arg_true()[0])
        raise SchemaError(f"benchmark {spec.name!r}: item id {df['id'][first]!r} appears more than once",
                          column=spec.id, row=first + 1, source=str(path))
    return df


def _resolve(spec: BenchmarkSpec, base_dir: Path) -> Path:
    path = candidate_path(spec.path, base_dir)
    if not path.exists():
        raise PrefdataError(f"decontaminate: benchmark {spec.name!r} file not found: {path.resolve()}")
    return path.resolve()


def benchmark_ngrams(cfg: DecontaminateConfig, base_dir: Path) -> BenchNgrams:
    """The benchmarks' n-gram table (cached per process on the files' paths, sizes and modification times)."""
    key = []
    for spec in cfg.benchmarks:
        path = _resolve(spec, base_dir)
        st = path.stat()
        key.append((spec, str(path), st.st_size, st.st_mtime_ns))
    return _bench_ngrams(tuple(key), cfg.ngram)


@lru_cache(maxsize=4)
def _bench_ngrams(key: tuple, ngram: int) -> BenchNgrams:
    parts, ids = [], []
    for b, (spec, path, _, _) in enumerate(key):
        df = _read(spec, Path(path))
        sh = shingle_hashes(df["text"], ngram, "word")
        parts.append(pl.DataFrame({"h": sh.hashes,
                                   POS: np.repeat(np.arange(df.height, dtype=np.uint32), sh.counts)})
                     .with_columns(pl.lit(b, pl.UInt16).alias(BENCH)))
        ids.append(df["id"])
    table = pl.concat(parts).unique(maintain_order=True).select("h", BENCH, POS)
    return BenchNgrams(table, ids)


# ------------------------------------------------------------------------------ keyed step

def prompt_units(frame: pl.LazyFrame, cfg: DecontaminateConfig, ctx: StepContext) -> pl.DataFrame:
    """The contaminated prompts of `frame`: prompt_id, rows, and the named match (benchmark, item position,
    shared n-grams). Uncontaminated prompts are not listed."""
    schema = frame.collect_schema()
    for col in ("prompt_id", "prompt"):
        if col not in schema:
            raise SchemaError(f"decontaminate: input has no column {col!r}", column=col, expected="string")
    bench = benchmark_ngrams(cfg, ctx.base_dir)
    size = pl.col("responses").list.len().sum() if table_kind(schema) == "lists" else pl.len()
    prompts = (frame.group_by("prompt_id", maintain_order=True)
               .agg(pl.col("prompt").first(), size.cast(pl.Int64).alias(ROWS)).collect())
    found = []
    for start in range(0, prompts.height, PROMPTS_PER_SLICE):
        part = prompts.slice(start, PROMPTS_PER_SLICE)
        sh = shingle_hashes(part["prompt"], cfg.ngram, "word")
        grams = pl.DataFrame({"h": sh.hashes, "__p": np.repeat(np.arange(part.height, dtype=np.int64), sh.counts)})
        hits = grams.join(bench.ngrams, on="h", how="inner").unique()
        if hits.height == 0:
            continue
        best = (hits.group_by("__p", BENCH, POS).agg(pl.len().alias(SHARED))
                .sort(["__p", SHARED, BENCH, POS], descending=[False, True, False, False])
                .group_by("__p", maintain_order=True).first())
        found.append(part.select("prompt_id", ROWS).with_row_index("__p").join(best, on="__p").drop("__p"))
    schema_out = {"prompt_id": pl.String, ROWS: pl.Int64, BENCH: pl.UInt16, POS: pl.UInt32, SHARED: pl.UInt32}
    return pl.concat(found) if found else pl.DataFrame(schema=schema_out)


@dataclass(frozen=True)
class DecontaminationPlan:
    matches: pl.DataFrame          # prompt_id, __label (the drop reason, or the flag value)
    info: dict[str, Any]
    summary: str


def plan_decontaminate(units: pl.DataFrame, cfg: DecontaminateConfig, ctx: StepContext) -> DecontaminationPlan:
    bench = benchmark_ngrams(cfg, ctx.base_dir)
    names = pl.Series([b.name for b in cfg.benchmarks], dtype=pl.String)
    units = units.with_columns(pl.col(BENCH).cast(pl.Int64))
    item = pl.concat([pl.DataFrame({BENCH: i, POS: np.arange(len(ids), dtype=np.uint32), "__id": ids})
                      for i, ids in enumerate(bench.ids)])
    m = units.join(item, on=[BENCH, POS], how="left").with_columns(
        pl.col(BENCH).replace_strict(list(range(len(names))), names.to_list(), return_dtype=pl.String).alias("__name"))
    if cfg.action == "drop":
        label = pl.format(f"{cfg.ngram}-gram overlap with {{}} item {{}}", pl.col("__name"), pl.col("__id"))
    else:
        label = pl.format("{}:{}", pl.col("__name"), pl.col("__id"))
    matches = m.select("prompt_id", label.alias(LABEL))
    per: dict[str, dict[str, int]] = {}
    for i, spec in enumerate(cfg.benchmarks):
        mine = m.filter(pl.col(BENCH) == i)
        per[spec.name] = {"items": len(bench.ids[i]), "items_matched": mine["__id"].n_unique(),
                          "prompts": mine.height, "rows": int(mine[ROWS].sum())}
    info = {"ngram": cfg.ngram, "action": cfg.action, "benchmarks": per, "prompts_matched": m.height,
            "rows_matched": int(m[ROWS].sum())}
    items = sum(p["items"] for p in per.values())
    summary = f"{len(per)} benchmark{'s' if len(per) > 1 else ''} ({items:,} items)"
    if m.height:
        what = "dropped" if cfg.action == "drop" else "flagged"
        by = ", ".join(f"{n} {p['prompts']:,}" for n, p in per.items() if p["prompts"])
        summary += f" · {what} {m.height:,} prompts ({info['rows_matched']:,} rows): {by}"
    else:
        summary += " · no overlap"
    return DecontaminationPlan(matches, info, summary)


def apply_decontaminate(frame: pl.LazyFrame, cfg: DecontaminateConfig, plan: DecontaminationPlan) -> Built:
    schema = frame.collect_schema()
    if cfg.action == "flag":
        base = frame.drop(cfg.column) if cfg.column in schema else frame
        out = with_prompt_columns(base, plan.matches).rename({LABEL: cfg.column}).collect()
        return Built(out.lazy(), table_kind(schema), rows_in=out.height, rows_kept=out.height, info=plan.info,
                     summary=plan.summary)
    df = with_prompt_columns(frame, plan.matches).rename({LABEL: DROP}).collect()
    return marked_result(df, DROP, table_kind(schema), plan.info, plan.summary)


def bound_decontaminate(plan: DecontaminationPlan):
    return bind_plan(apply_decontaminate, plan)


def build_decontaminate(frame: pl.LazyFrame, cfg: DecontaminateConfig, ctx: StepContext) -> Built:
    return apply_decontaminate(frame, cfg, plan_decontaminate(prompt_units(frame, cfg, ctx), cfg, ctx))
