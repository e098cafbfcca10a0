"""`split` step: a held-out test split, by prompt (or by near-duplicate cluster), written as a `split` column.

```yaml
- split: {test: 0.1, seed: 0, stratify_by: source}   # test: a fraction in (0, 1) or a count of prompts
```
Every row of a prompt gets the same value (`train` / `test`), so a prompt's pairs never straddle the split
(that leak inflates held-out reward accuracy). No row is dropped: rows_in == rows_kept == rows out, input
order kept; an existing `split` column is replaced.

How prompts are chosen (the same on every machine, for any row order and any partitioning):
- The unit is the prompt, or the near-duplicate cluster when the table has a `cluster_id` column: all
  prompts of one cluster go to the same side, so near-duplicates of a test prompt never sit in train. A
  prompt with a null `cluster_id` is its own unit; `cluster_id` must be constant within a prompt.
- The target number of test prompts is T = N for `test: N` (N < number of prompts), or
  round-half-up(fraction x n_prompts) clamped to [1, n_prompts - 1] for a fraction; at least 2 prompts.
- Units are ranked by a stable 64-bit hash of (seed, unit id) (`builders/stable_hash.py`; the id breaks
  equal hashes) and the test side takes them in that order: with one prompt per unit, exactly the first
  T. With clusters, the test side is the prefix of clusters (in hash order) whose prompt total is closest
  to T (ties: the shorter prefix), so the count can differ from T by less than one cluster; at least one
  unit goes to each side. The counts reached are in the step info.
- `stratify_by: COLUMN` (constant within a prompt and within a cluster; null is its own stratum): stratum
  s with n_s prompts gets T x n_s / n test prompts, rounded by largest remainder: every stratum gets the
  floor, and the T - sum(floors) left over go one each to the strata with the largest remainders (ties:
  the larger stratum, then the smaller stratum value, null last), so the strata add up to exactly T.
  Inside a stratum the units are taken in hash order as above.

Only the (small) table of prompts decides the assignment, so a partitioned build (prefdata/partitioned.py)
collects that table from every partition, plans once (`plan_split`) and applies the plan per partition
(`apply_split`): the same column as the in-memory build."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import polars as pl
from pydantic import field_validator

from builders.base import Built, StepConfig, StepContext
from builders.stable_hash import seeded_hash
from prefdata.errors import SchemaError

SPLIT = "split"
CLUSTER = "cluster_id"
TRAIN, TEST = "train", "test"
# columns of the per-prompt table the plan is made from
ROWS, UNIT, UNIT_KIND, STRATUM = "__rows", "__unit", "__unit_kind", "__stratum"
NESTED = (pl.List, pl.Array, pl.Struct)


class SplitConfig(StepConfig):
    test: int | float                       # a fraction of the prompts in (0, 1), or a count of prompts >= 1
    seed: int | None = None                 # None: the recipe's seed
    stratify_by: str | None = None          # a column constant within a prompt (and within a cluster)

    @field_validator("test", mode="before")
    @classmethod
    def _test_value(cls, v: Any) -> int | float:
        bad = "test must be a fraction in (0, 1) or a whole number of prompts >= 1"
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError(f"{bad}, got {v!r}")
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{bad}, got {v!r}")
        if v <= 0:
            raise ValueError(f"{bad}, got {v!r}")
        if isinstance(v, float) and v >= 1:
            if not v.is_integer():
                raise ValueError(f"{bad}: {v!r} is neither (a fraction is < 1, a count is whole)")
            return int(v)
        return v

    @field_validator("stratify_by")
    @classmethod
    def _column_name(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("stratify_by must name a column")
        return v

    def label(self) -> str:
        what = f"{self.test * 100:g} % of prompts" if isinstance(self.test, float) else f"{self.test:,} prompts"
        s = f"test {what}"
        return s + (f", stratified by {self.stratify_by}" if self.stratify_by else "")


@dataclass(frozen=True)
class SplitPlan:
    """The global decision: which prompts are test, and the step's report (the same for any partitioning)."""
    assignment: pl.DataFrame                 # prompt_id, split
    info: dict[str, Any]
    summary: str


def target_test_prompts(test: int | float, n_prompts: int) -> int:
    """T: N for a count, else round-half-up(fraction x n) clamped to [1, n - 1]."""
    if n_prompts < 2:
        raise SchemaError(f"split: needs at least 2 prompts (one per side), the input has {n_prompts}",
                          column="prompt_id")
    if isinstance(test, int):
        if test >= n_prompts:
            raise SchemaError(f"split: test: {test} asks for {test:,} test prompts, but the input has "
                              f"{n_prompts:,} (at least one must stay in train)", column="prompt_id")
        return test
    return min(max(math.floor(test * n_prompts + 0.5), 1), n_prompts - 1)


def _check_columns(schema: pl.Schema, cfg: SplitConfig) -> None:
    if "prompt_id" not in schema:
        raise SchemaError("split: input has no column 'prompt_id' (the split is by prompt)", column="prompt_id",
                          expected="string")
    col = cfg.stratify_by
    if col is not None:
        if col not in schema:
            raise SchemaError(f"split: stratify_by column {col!r} is not in the input (columns: "
                              f"{', '.join(schema)})", column=col)
        if isinstance(schema[col], NESTED):
            raise SchemaError(f"split: stratify_by column {col!r} is {schema[col]}; it must hold one plain "
                              "value per row (text, number, bool)", column=col, expected="scalar")
    if CLUSTER in schema and isinstance(schema[CLUSTER], NESTED):
        raise SchemaError(f"split: column {CLUSTER!r} is {schema[CLUSTER]}, expected a string id per row",
                          column=CLUSTER, expected="string")


def _first_bad(df: pl.DataFrame, flag: str, key: str) -> str:
    return str(df.filter(pl.col(flag)).sort(key).row(0, named=True)[key])


def prompt_units(frame: pl.LazyFrame, cfg: SplitConfig) -> pl.DataFrame:
    """One row per prompt: prompt_id, its row count, its unit (cluster or prompt) and stratum. Raises
    SchemaError when cluster_id or the stratify_by column varies within a prompt."""
    schema = frame.collect_schema()
    _check_columns(schema, cfg)
    aggs = [pl.len().alias(ROWS)]
    has_cluster = CLUSTER in schema
    if has_cluster:
        aggs += [pl.col(CLUSTER).cast(pl.String).first().alias(UNIT),
                 (pl.col(CLUSTER).n_unique() > 1).alias("__cluster_varies")]
    if cfg.stratify_by is not None:
        aggs += [pl.col(cfg.stratify_by).first().alias(STRATUM),
                 (pl.col(cfg.stratify_by).n_unique() > 1).alias("__stratum_varies")]
    units = frame.group_by("prompt_id").agg(aggs).collect()
    if units["prompt_id"].null_count():
        raise SchemaError("split: column 'prompt_id' is null in some rows (every row needs its prompt)",
                          column="prompt_id", expected="non-null string")
    if has_cluster and units["__cluster_varies"].any():
        pid = _first_bad(units, "__cluster_varies", "prompt_id")
        raise SchemaError(f"split: column {CLUSTER!r} differs within prompt {pid!r} (a prompt belongs to one "
                          "near-duplicate cluster)", column=CLUSTER)
    if cfg.stratify_by is not None and units["__stratum_varies"].any():
        pid = _first_bad(units, "__stratum_varies", "prompt_id")
        raise SchemaError(f"split: stratify_by column {cfg.stratify_by!r} differs within prompt {pid!r} "
                          "(a stratum must be constant within a prompt)", column=cfg.stratify_by)
    # a prompt without a cluster is its own unit; the kind keeps a cluster id and a prompt id apart
    unit = pl.col(UNIT) if has_cluster else pl.lit(None, pl.String)
    units = units.with_columns(
        pl.when(unit.is_null()).then(pl.lit("prompt")).otherwise(pl.lit("cluster")).alias(UNIT_KIND),
        pl.coalesce(unit, pl.col("prompt_id")).alias(UNIT))
    if cfg.stratify_by is None:
        units = units.with_columns(pl.lit(None, pl.String).alias(STRATUM))
    return units.select("prompt_id", ROWS, UNIT_KIND, UNIT, STRATUM)


def _stratum_names(values: pl.Series) -> list[str]:
    return values.cast(pl.String).fill_null("null").to_list()


def plan_split(units: pl.DataFrame, cfg: SplitConfig, ctx: StepContext) -> SplitPlan:
    """The assignment of every prompt in `units` (prompt_units over the whole input, in any row order)."""
    seed = ctx.seed if cfg.seed is None else cfg.seed
    n = units.height
    target = target_test_prompts(cfg.test, n)
    col = cfg.stratify_by
    by_unit = units.group_by(UNIT_KIND, UNIT).agg(
        pl.len().alias("__size"), pl.col(ROWS).sum(), pl.col(STRATUM).first(),
        (pl.col(STRATUM).n_unique() > 1).alias("__stratum_varies"))
    if col is not None and by_unit["__stratum_varies"].any():
        cid = _first_bad(by_unit, "__stratum_varies", UNIT)
        raise SchemaError(f"split: stratify_by column {col!r} differs within cluster {cid!r} (a stratum must "
                          "be constant within a near-duplicate cluster)", column=col)
    if by_unit.height < 2:
        raise SchemaError(f"split: all {n:,} prompts are in one near-duplicate cluster; a split needs 2",
                          column=CLUSTER)
    # strata: a dense index (null included), in the tie-break order (value ascending, null last)
    strata = (by_unit.group_by(STRATUM).agg(pl.col("__size").sum().alias("__n_s"))
              .sort(STRATUM, nulls_last=True).with_row_index("__s"))
    # largest remainder: floor(T n_s / n) each, the rest one each by (remainder, size, value) order
    strata = strata.with_columns((pl.col("__n_s") * target // n).alias("__base"),
                                 (pl.col("__n_s") * target % n).alias("__rem"))
    left = target - int(strata["__base"].sum())
    strata = (strata.sort(["__rem", "__n_s", "__s"], descending=[True, True, False])
              .with_columns((pl.col("__base") + (pl.int_range(pl.len()) < left).cast(pl.Int64)).alias("__q")))
    kinds = by_unit[UNIT_KIND] if (by_unit[UNIT_KIND] == "cluster").any() else None
    key = seeded_hash(seed, *(([kinds] if kinds is not None else []) + [by_unit[UNIT]]))
    ranked = (by_unit.with_columns(pl.Series("__h", key, pl.UInt64))
              .join(strata.select(STRATUM, "__s", "__q"), on=STRATUM, how="left", nulls_equal=True)
              .sort(["__s", "__h", UNIT_KIND, UNIT])
              .with_columns(pl.col("__size").cum_sum().over("__s").alias("__cum"))
              .with_columns((pl.col("__cum") - pl.col("__size")).alias("__prev")))
    q, cum, prev = pl.col("__q"), pl.col("__cum"), pl.col("__prev")
    # the prefix of units (hash order) whose prompt total is closest to the stratum's quota, ties shorter
    is_test = (cum <= q) | ((prev < q) & ((cum - q) < (q - prev)))
    ranked = ranked.with_columns(is_test.alias("__test"))
    if not ranked["__test"].any() or ranked["__test"].all():
        # only with clusters larger than the quota: one unit goes over so each side has one
        flip = 0 if not ranked["__test"].any() else ranked.height - 1
        order = ranked.sort(["__h", UNIT_KIND, UNIT]).with_row_index("__g").select(UNIT_KIND, UNIT, "__g")
        ranked = (ranked.join(order, on=[UNIT_KIND, UNIT]).with_columns(
            pl.when(pl.col("__g") == flip).then(~pl.col("__test")).otherwise(pl.col("__test")).alias("__test"))
            .drop("__g"))
    ranked = ranked.with_columns(pl.when(pl.col("__test")).then(pl.lit(TEST)).otherwise(pl.lit(TRAIN))
                                 .alias(SPLIT))
    assignment = units.join(ranked.select(UNIT_KIND, UNIT, SPLIT), on=[UNIT_KIND, UNIT], how="left") \
        .select("prompt_id", SPLIT)
    info, summary = _report(ranked, strata, cfg, seed, target)
    return SplitPlan(assignment, info, summary)


def _side_counts(ranked: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    return ranked.group_by(by + [SPLIT]).agg(pl.col("__size").sum().alias("prompts"),
                                             pl.col(ROWS).sum().alias("rows"), pl.len().alias("units"))


def _sides(rows: pl.DataFrame, clusters: bool) -> dict[str, dict[str, int]]:
    out = {}
    for side in (TRAIN, TEST):
        r = rows.filter(pl.col(SPLIT) == side)
        d = {"prompts": int(r["prompts"].sum()), "rows": int(r["rows"].sum())}
        if clusters:
            d["units"] = int(r["units"].sum())
        out[side] = d
    return out


def _report(ranked: pl.DataFrame, strata: pl.DataFrame, cfg: SplitConfig, seed: int,
            target: int) -> tuple[dict, str]:
    clusters = bool((ranked[UNIT_KIND] == "cluster").any())
    sides = _sides(_side_counts(ranked, []), clusters)
    info: dict[str, Any] = {"seed": seed, "unit": "cluster" if clusters else "prompt",
                            "target_test_prompts": target, **sides}
    if cfg.stratify_by is not None:
        per = _side_counts(ranked, ["__s"])
        names = strata.sort("__s")
        info["stratify_by"] = cfg.stratify_by
        info["strata"] = {name: {**_sides(per.filter(pl.col("__s") == s), clusters), "target_test_prompts": int(qs)}
                          for name, s, qs in zip(_stratum_names(names[STRATUM]), names["__s"], names["__q"],
                                                 strict=True)}
    tr, te = sides[TRAIN], sides[TEST]
    summary = (f"train {tr['prompts']:,} prompts ({tr['rows']:,} rows) · "
               f"test {te['prompts']:,} prompts ({te['rows']:,} rows)")
    if clusters:
        summary += f" · clusters kept whole ({tr['units']:,} train / {te['units']:,} test units)"
    if cfg.stratify_by is not None:
        summary += f" · {len(info['strata'])} strata by {cfg.stratify_by}"
    return info, summary


def apply_split(frame: pl.LazyFrame, cfg: SplitConfig, plan: SplitPlan, *, rows: int | None = None) -> Built:
    """The input with the plan's `split` column (every prompt of the input is in the plan). The output is
    the input's kind (prompts, responses, pairs or lists), read from the contract columns as `filter` does."""
    schema = frame.collect_schema()
    base = frame.drop(SPLIT) if SPLIT in schema else frame
    out = base.join(plan.assignment.lazy(), on="prompt_id", how="left", maintain_order="left")
    if rows is None:
        rows = frame.select(pl.len()).collect().item()
    return Built(out, _kind(schema), rows_in=rows, rows_kept=rows, info=plan.info, summary=plan.summary)


def build_split(frame: pl.LazyFrame, cfg: SplitConfig, ctx: StepContext) -> Built:
    units = prompt_units(frame, cfg)
    return apply_split(frame, cfg, plan_split(units, cfg, ctx), rows=int(units[ROWS].sum()))


def bound_split(plan: SplitPlan):
    """The step function with a plan made over the whole input (partitioned builds run it per partition)."""
    def fn(frame: pl.LazyFrame, cfg: SplitConfig, ctx: StepContext) -> Built:
        return apply_split(frame, cfg, plan)
    return fn


def _kind(schema: pl.Schema) -> str:
    if "chosen" in schema and "rejected" in schema:
        return "pairs"
    if "responses" in schema and "ranks" in schema:
        return "lists"
    # a prompts table (split before `generate`, so held-out prompts are never sampled for training)
    return "responses" if "response" in schema else "prompts"
