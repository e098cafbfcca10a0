"""Weighted mixtures of sources: which prompts of each source a mixture recipe takes, and the `source` column.

```yaml
sources:
  - {name: arena, path: ../data/arena.jsonl, format: arena, weight: 1}
  - {name: hh, path: ../data/hh.jsonl, format: hh-rlhf, unpair: true, weight: 2, max_prompts: 800}
```
The choice is by prompt (all rows of a chosen prompt together) and happens before the recipe's steps, on the
sources as read. For each source, in entry order:

1. duplicates across sources: a prompt_id already in an earlier entry is dropped from this one
   ("prompt also in source <earlier>"), so every prompt belongs to one source;
2. seeded order: the source's prompts are ranked by a stable 64-bit hash of (seed, prompt_id)
   (builders/stable_hash.py; the prompt_id breaks equal hashes): a prompt's place depends on the seed and
   its own id only;
3. caps: `max_prompts: N` keeps the first N prompts of that order, `max_rows: R` the longest prefix whose
   rows add up to at most R (both: the shorter prefix); the rest are dropped ("not chosen (max_prompts)" /
   "not chosen (max_rows)"). The prompts left are the source's *available* prompts a_i;
4. weights: the entries with a `weight` share the weighted total T in proportion to their weights w_i.
   T is the largest total that respects every weighted source's share and availability:
   T = min_i floor(a_i * W / w_i) with W = sum of the weights (exact rational arithmetic on the weights as
   written: 0.3 is 3/10), and source i gets
   n_i prompts by largest remainder: floor(T w_i / W) each, and the T - sum of floors left over go one each
   to the largest remainders (ties: the earlier entry). n_i <= a_i always holds (T w_i / W <= a_i and a_i is
   whole). Source i keeps the first n_i of its available prompts; the others are "not chosen (weight)".
   A weighted source with no available prompt is an error (its share cannot be met).
   An entry without `weight` keeps all its available prompts.

The output is the chosen rows of every source, entry by entry, each source's rows in their input order, with
a `source` column holding the entry's name. A source that already has a `source` column is an error.

`unpair` turns a pairs source into responses, so it can be mixed with responses sources (and paired again by
the recipe's `pairs` step): each pair gives its chosen row, then its rejected row (response, response_id from
chosen/chosen_id and rejected/rejected_id; per-side columns X_chosen / X_rejected become X). The score is the
pair's own score_chosen / score_rejected when both are given, else 1.0 for chosen and 0.0 for rejected (a
human preference without a rating); the count of such pairs is reported. margin, weight, stage and strategy
are pair properties and are not kept."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import polars as pl

from builders.base import SOURCE
from builders.stable_hash import seeded_hash
from prefdata.errors import SchemaError

PAIR_ONLY = ("margin", "weight", "stage", "strategy")
SIDES = {"chosen": "response", "chosen_id": "response_id", "score_chosen": "score"}
NOT_CHOSEN = {"max_prompts": "not chosen (max_prompts)", "max_rows": "not chosen (max_rows)",
              "weight": "not chosen (weight)"}


@dataclass(frozen=True)
class Take:
    """How much of one source a mixture takes (validated by the recipe parser)."""
    name: str
    weight: float | None = None
    max_prompts: int | None = None
    max_rows: int | None = None


@dataclass
class SourceTally:
    """One source's accounting in the mixture: rows_in == rows_kept + sum(drops)."""
    rows_in: int
    prompts_in: int
    rows_kept: int = 0
    prompts_kept: int = 0
    available_prompts: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    prompt_drops: dict[str, int] = field(default_factory=dict)

    def as_dict(self, take: Take) -> dict[str, Any]:
        d = {"rows_in": self.rows_in, "prompts_in": self.prompts_in, "available_prompts": self.available_prompts,
             "rows_kept": self.rows_kept, "prompts_kept": self.prompts_kept, "drops": dict(self.drops),
             "prompt_drops": dict(self.prompt_drops)}
        for k in ("weight", "max_prompts", "max_rows"):
            if getattr(take, k) is not None:
                d[k] = getattr(take, k)
        return d


@dataclass
class Mixed:
    frame: pl.DataFrame
    tallies: dict[str, dict[str, Any]]       # per source: SourceTally.as_dict
    weighted_total: int | None               # T (prompts shared by the weighted sources); None: no weights
    drops: dict[str, int]                    # all sources, by reason
    drops_by_source: dict[str, dict[str, int]]

    @property
    def rows_in(self) -> int:
        return sum(t["rows_in"] for t in self.tallies.values())

    def summary(self) -> str:
        parts = [f"{n} {t['prompts_kept']:,}/{t['prompts_in']:,} prompts ({t['rows_kept']:,} rows)"
                 for n, t in self.tallies.items()]
        s = " · ".join(parts)
        if self.weighted_total is not None:
            s += f" · weighted total {self.weighted_total:,} prompts"
        return s


def unpair(df: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """A pairs table -> responses (see module doc); returns (responses, pairs scored 1/0 for lack of scores)."""
    for col in ("prompt_id", "chosen", "rejected", "chosen_id", "rejected_id"):
        if col not in df.columns:
            raise SchemaError(f"unpair: the source has no column {col!r} (unpair takes a pairs table)", column=col)
    scored = pl.col("score_chosen").is_not_null() & pl.col("score_rejected").is_not_null() \
        if {"score_chosen", "score_rejected"} <= set(df.columns) else pl.lit(False)
    df = df.with_columns(__scored=scored)
    binary = int((~df["__scored"]).sum())
    df = df.with_columns(score_chosen=pl.when("__scored").then(pl.col("score_chosen")).otherwise(1.0),
                         score_rejected=pl.when("__scored").then(pl.col("score_rejected")).otherwise(0.0))
    sided = {c[: -len("_chosen")] for c in df.columns if c.endswith("_chosen") and c.replace("_chosen", "_rejected")
             in df.columns} | {"score"}
    shared = [c for c in df.columns if c not in ("chosen", "rejected", "chosen_id", "rejected_id", "__scored")
              and c not in PAIR_ONLY and not any(c in (f"{s}_chosen", f"{s}_rejected") for s in sided)]

    def side(which: str) -> pl.DataFrame:
        cols = [pl.col(which).alias("response"), pl.col(f"{which}_id").alias("response_id")]
        cols += [pl.col(f"{s}_{which}").alias(s) for s in sorted(sided)]
        return df.select(*shared, *cols).with_row_index("__pair")

    both = pl.concat([side("chosen").with_columns(__side=pl.lit(0)),
                      side("rejected").with_columns(__side=pl.lit(1))])
    out = both.sort("__pair", "__side").drop("__pair", "__side")
    first = [c for c in ("prompt_id", "prompt", "messages", "response_id", "response", "score") if c in out.columns]
    return out.select(first + [c for c in out.columns if c not in first]), binary


def _prompts(df: pl.DataFrame, seed: int) -> pl.DataFrame:
    """One row per prompt in seeded order: prompt_id, its row count."""
    per = df.group_by("prompt_id", maintain_order=True).len("__rows")
    per = per.with_columns(pl.Series("__h", seeded_hash(seed, per["prompt_id"]), pl.UInt64))
    return per.sort("__h", "prompt_id").drop("__h")


def weighted_counts(available: list[int], weights: list[float]) -> tuple[int, list[int]]:
    """(T, n_i): the largest total respecting every share and availability, apportioned by largest remainder
    (ties: the earlier entry). Exact: a weight is read as the decimal it is written as (repr), 0.3 as 3/10."""
    w = [Fraction(repr(float(x))) for x in weights]
    total_w = sum(w)
    t = min(math.floor(a * total_w / wi) for a, wi in zip(available, w, strict=True))
    quotas = [t * wi / total_w for wi in w]
    n = [math.floor(q) for q in quotas]
    left = t - sum(n)
    by_remainder = sorted(range(len(w)), key=lambda i: (-(quotas[i] - n[i]), i))
    for i in by_remainder[:left]:
        n[i] += 1
    return t, n


def mix(parts: list[tuple[Take, pl.DataFrame]], seed: int) -> Mixed:
    """The mixture of `parts` (each source's table with its Take), see the module doc. Raises SchemaError for
    a source without prompt_id or with a `source` column, and when a weighted source has no prompt left."""
    seen = pl.DataFrame(schema={"prompt_id": pl.String, "__prior": pl.String})   # prompt -> first entry with it
    chosen_order: list[tuple[Take, pl.DataFrame, pl.DataFrame, SourceTally]] = []
    for take, df in parts:
        if "prompt_id" not in df.columns:
            raise SchemaError(f"mixture source {take.name!r} has no column 'prompt_id'", column="prompt_id")
        if SOURCE in df.columns:
            raise SchemaError(f"mixture source {take.name!r} already has a column 'source' (the mixture writes the "
                              "entry's name there; rename or drop it)", column=SOURCE)
        per = _prompts(df, seed)
        tally = SourceTally(rows_in=df.height, prompts_in=per.height)
        per = per.join(seen, on="prompt_id", how="left", maintain_order="left").with_columns(
            __why=pl.when(pl.col("__prior").is_not_null()).then(pl.lit("prompt also in source ") + pl.col("__prior")))
        fresh = pl.col("__why").is_null()
        rank = fresh.cast(pl.Int64).cum_sum() - 1            # place among the non-duplicate prompts
        cum_rows = pl.when(fresh).then(pl.col("__rows")).otherwise(0).cum_sum()
        cut = pl.lit(None, pl.String)
        if take.max_prompts is not None:
            cut = pl.when(rank >= take.max_prompts).then(pl.lit(NOT_CHOSEN["max_prompts"])).otherwise(cut)
        if take.max_rows is not None:
            over = (cum_rows > take.max_rows).cum_max()      # a prefix: once over, every later prompt too
            cut = pl.when(cut.is_null() & over).then(pl.lit(NOT_CHOSEN["max_rows"])).otherwise(cut)
        per = per.with_columns(__why=pl.coalesce("__why", pl.when(fresh).then(cut))).drop("__prior")
        tally.available_prompts = int(per["__why"].null_count())
        new = per.filter(pl.col("__why").is_null() | ~pl.col("__why").str.starts_with("prompt also in"))
        seen = pl.concat([seen, new.select("prompt_id", pl.lit(take.name, pl.String).alias("__prior"))])
        chosen_order.append((take, df, per, tally))

    weighted = [(i, e) for i, e in enumerate(chosen_order) if e[0].weight is not None]
    total = None
    if weighted:
        for _, (take, _df, _per, tally) in weighted:
            if tally.available_prompts == 0:
                raise SchemaError(f"mixture source {take.name!r} has no prompt left to take (after duplicates "
                                  "and caps), so its weight share cannot be met", column="prompt_id")
        total, counts = weighted_counts([e[3].available_prompts for _, e in weighted],
                                        [e[0].weight for _, e in weighted])
        for (i, (take, df, per, tally)), n in zip(weighted, counts, strict=True):
            avail = pl.col("__why").is_null()
            place = avail.cast(pl.Int64).cum_sum() - 1
            per = per.with_columns(__why=pl.when(avail & (place >= n)).then(pl.lit(NOT_CHOSEN["weight"]))
                                   .otherwise(pl.col("__why")))
            chosen_order[i] = (take, df, per, tally)

    frames, drops, by_source, tallies = [], {}, {}, {}
    for take, df, per, tally in chosen_order:
        why = df.select("prompt_id").join(per.select("prompt_id", "__why"), on="prompt_id", how="left",
                                          maintain_order="left")["__why"]
        kept = df.filter(why.is_null()).with_columns(pl.lit(take.name, pl.String).alias(SOURCE))
        frames.append(kept)
        tally.rows_kept, tally.prompts_kept = kept.height, int(per["__why"].null_count())
        tally.drops = _counts(why.drop_nulls())
        tally.prompt_drops = _counts(per["__why"].drop_nulls())
        for r, k in tally.drops.items():
            drops[r] = drops.get(r, 0) + k
        if tally.drops:
            by_source[take.name] = dict(tally.drops)
        tallies[take.name] = tally.as_dict(take)
    _check_types([(t.name, f) for (t, *_), f in zip(chosen_order, frames, strict=True)])
    frame = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
    return Mixed(frame, tallies, total, dict(sorted(drops.items())), by_source)


def _compatible(a: pl.DataType, b: pl.DataType) -> bool:
    """Types the concatenation may unify without changing a value's meaning: equal, numbers, structs (fields
    are merged, missing ones null), lists of compatible items, or a column of nulls."""
    if a == b or pl.Null in (a, b):
        return True
    if a.is_numeric() and b.is_numeric():
        return True
    if isinstance(a, pl.Struct) and isinstance(b, pl.Struct):
        fa, fb = {f.name: f.dtype for f in a.fields}, {f.name: f.dtype for f in b.fields}
        return all(_compatible(fa[k], fb[k]) for k in fa.keys() & fb.keys())
    if isinstance(a, pl.List) and isinstance(b, pl.List):
        return _compatible(a.inner, b.inner)
    return False


def _check_types(frames: list[tuple[str, pl.DataFrame]]) -> None:
    """Same-named columns of two sources must be compatible (no text made of a struct, ...): SchemaError."""
    seen: dict[str, tuple[str, pl.DataType]] = {}
    for name, df in frames:
        for col, dtype in df.schema.items():
            if col in seen and not _compatible(seen[col][1], dtype):
                raise SchemaError(f"mixture sources {seen[col][0]!r} and {name!r} disagree on column {col!r}: "
                                  f"{seen[col][1]} vs {dtype} (rename it in one of them, or map it)", column=col,
                                  expected=str(seen[col][1]))
            seen.setdefault(col, (name, dtype))


def _counts(reasons: pl.Series) -> dict[str, int]:
    vc = reasons.value_counts(sort=False)
    return {str(r): int(n) for r, n in sorted(vc.iter_rows())}
