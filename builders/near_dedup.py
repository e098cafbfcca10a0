"""`near_dedup` step: near-duplicate prompts (or responses) by MinHash + LSH, a `cluster_id` column, one prompt
kept per cluster.

```yaml
- near_dedup: {threshold: 0.8, shingle: 5, keep: first}      # defaults: on prompt, word 5-grams, 128 perms
- near_dedup: {bands: 16, rows: 8, num_perm: 128, shingle: 5, shingle_unit: char, keep: most_responses}
- near_dedup: {action: flag}          # keep every prompt, only write cluster_id (split keeps clusters whole)
```
How (builders/shingles.py, builders/minhash.py): each prompt's normalized text -> hashed word (or character)
n-grams -> a MinHash signature of num_perm values (seed: the step's, else the recipe's) -> b bands of r rows
(given, or derived from `threshold` as datasketch does). Prompts sharing a band key are candidate pairs;
with `verify: true` (the default) a candidate pair links two prompts only when its estimated Jaccard
similarity (8-bit sketches of the signatures) is >= threshold. A cluster is an exact connected component
of those links (transitive: a ~ b and b ~ c put a, b, c in one cluster). A prompt whose text has no word
(empty after normalization) is a cluster of its own.

Each cluster keeps one prompt: `first` (earliest in the input), `most_responses` (most rows: responses,
pairs, or a list's responses; ties: first) or `best_score` (highest score of its rows: `score` on
responses, `score_chosen` on pairs, the list's `scores`; null lowest; ties: first). `cluster_id` is the
kept prompt's prompt_id, on every row of every prompt of the cluster (a prompt alone: its own id). With
`action: drop` (default) the other prompts' rows are dropped with the reason `near-duplicate of prompt
<kept prompt_id>`; with `action: flag` nothing is dropped. An existing `cluster_id` column is replaced.

`on: response`: the same within each prompt, over response texts (responses tables only): near-duplicate
responses of one prompt form a cluster, one is kept (`first` or `best_score`), the others are dropped with
`near-duplicate of response <kept response_id>`, and the column is `response_cluster_id` (cluster_id stays
a per-prompt column, as `split` requires). That mode is prompt-local.

Partitioned builds: on prompts the step is *keyed* (like `split`): each partition reduces its prompts to a
small table (prompt_id, first input row, rows, score, b band keys, the 8-bit sketch: ~100 + num_perm bytes
a prompt), the table of all partitions is clustered once (`plan_near_dedup`) and the plan applied per
partition, so clusters spanning partitions are found and the result equals the in-memory build."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import Field, model_validator

from builders.base import Built, StepConfig, StepContext
from builders.keyed import bind_plan, marked_result, with_prompt_columns
from builders.minhash import band_keys, components, optimal_bands, signatures, sketch
from builders.rank import ROW, prompt_key
from builders.shingles import shingle_hashes
from builders.split import _kind as table_kind
from prefdata.errors import SchemaError

CLUSTER, RESPONSE_CLUSTER = "cluster_id", "response_cluster_id"
# a prompt's first row in the step's input; a partitioned build replaces it with the source row of that row
ORDER = "__pfirst"
TEXTS_PER_SLICE = 8_192           # texts per features pass (measured: faster and ~1/4 the transient memory of 65k)
ROWS, SCORE, HAS, SIG, BANDS, SKETCH, LABEL, KEPT, DROP = (
    "__rows", "__score", "__has", "__sig", "__bands", "__sketch", "__label", "__kept", "__drop")


class NearDedupConfig(StepConfig):
    output_kind: ClassVar[str | None] = None
    on: Literal["prompt", "response"] = "prompt"
    shingle: int = Field(5, ge=1, le=64)                   # n-gram size
    shingle_unit: Literal["word", "char"] = "word"
    num_perm: int = Field(128, ge=8, le=1024)
    threshold: float = Field(0.8, gt=0, lt=1)              # Jaccard similarity that makes a near-duplicate
    bands: int | None = Field(None, ge=1)                   # with rows: the LSH layout (else from threshold)
    rows: int | None = Field(None, ge=1)
    verify: bool = True                                     # link a candidate pair only if J_est >= threshold
    seed: int | None = None                                 # None: the recipe's seed
    keep: Literal["first", "most_responses", "best_score"] = "first"
    action: Literal["drop", "flag"] = "drop"

    @model_validator(mode="after")
    def _check(self):
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both bands and rows, or neither (then they are derived from threshold)")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands} x {self.rows} = {self.bands * self.rows} is more than "
                             f"num_perm ({self.num_perm})")
        if self.on == "response" and self.keep == "most_responses":
            raise ValueError("keep: most_responses needs on: prompt (a response cluster keeps first or best_score)")
        return self

    def lsh(self) -> tuple[int, int]:
        """(bands, rows): as given, else the datasketch-optimal pair for threshold and num_perm."""
        if self.bands is not None:
            return self.bands, self.rows
        return _optimal(self.threshold, self.num_perm)

    def label(self) -> str:
        b, r = self.lsh()
        what = "responses within a prompt" if self.on == "response" else "prompts"
        return (f"{what}, {self.shingle_unit} {self.shingle}-grams, J >= {self.threshold:g} ({b}x{r} of {self.num_perm}"
                f"{', verified' if self.verify else ''}), keep {self.keep.replace('_', ' ')}")


@lru_cache(maxsize=64)
def _optimal(threshold: float, num_perm: int) -> tuple[int, int]:
    return optimal_bands(threshold, num_perm)


@dataclass(frozen=True)
class Features:
    """What LSH needs of n texts; the arrays have a row only for texts with >= 1 shingle (`has`)."""
    has: np.ndarray            # bool [n]
    keys: np.ndarray           # uint64 [m, bands]
    sig_id: np.ndarray         # uint64 [m], hash of the whole signature
    sketch: np.ndarray | None  # uint8 [m, num_perm] (verify only)


def features(texts: pl.Series, cfg: NearDedupConfig, seed: int) -> Features:
    """LSH features of every text, computed in slices so the full signatures (4 x num_perm bytes a text) are
    never all held at once."""
    b, r = cfg.lsh()
    parts = []
    for start in range(0, len(texts), TEXTS_PER_SLICE):
        sig, has = signatures(shingle_hashes(texts.slice(start, TEXTS_PER_SLICE), cfg.shingle, cfg.shingle_unit),
                              cfg.num_perm, seed)
        parts.append(Features(has, band_keys(sig, b, r), band_keys(sig, 1, cfg.num_perm)[:, 0],
                              sketch(sig) if cfg.verify else None))
    if not parts:
        return Features(np.zeros(0, bool), np.zeros((0, b), np.uint64), np.zeros(0, np.uint64),
                        np.zeros((0, cfg.num_perm), np.uint8) if cfg.verify else None)
    return Features(np.concatenate([p.has for p in parts]), np.concatenate([p.keys for p in parts]),
                    np.concatenate([p.sig_id for p in parts]),
                    np.concatenate([p.sketch for p in parts]) if cfg.verify else None)


def _labels(f: Features, cfg: NearDedupConfig, scope: np.ndarray | None = None):
    """Cluster index of every text (texts without shingles alone) and the LSH report."""
    comp = components(f.keys, f.sig_id, scope=scope, sk=f.sketch, threshold=cfg.threshold)
    labels = np.empty(len(f.has), dtype=np.int64)
    labels[f.has] = comp.labels
    alone = int((~f.has).sum())
    labels[~f.has] = (int(comp.labels.max()) + 1 if len(comp.labels) else 0) + np.arange(alone)
    b, r = cfg.lsh()
    info: dict[str, Any] = {"bands": b, "rows": r, "num_perm": cfg.num_perm, "threshold": cfg.threshold,
                            "verify": cfg.verify, "identical_texts": comp.identical, "texts_without_shingles": alone}
    if cfg.verify:
        info.update(candidate_pairs=comp.candidate_pairs, verified_pairs=comp.verified_pairs)
    return labels, info


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _seed(cfg: NearDedupConfig, ctx: StepContext) -> int:
    return ctx.seed if cfg.seed is None else cfg.seed


def _need(schema: pl.Schema, *cols: str) -> None:
    for c in cols:
        if c not in schema:
            raise SchemaError(f"near_dedup: input has no column {c!r}", column=c, expected="string")


def _score_expr(schema: pl.Schema, kind: str) -> pl.Expr:
    """A prompt's score for keep: best_score (its best row)."""
    col = {"pairs": "score_chosen", "lists": "scores"}.get(kind, "score")
    if col not in schema:
        raise SchemaError(f"near_dedup: keep best_score needs a {col!r} column on {kind}", column=col,
                          expected="float64")
    return (pl.col(col).list.max() if kind == "lists" else pl.col(col)).cast(pl.Float64).max()


# ------------------------------------------------------------------------------ on: prompt (keyed)

def prompt_units(frame: pl.LazyFrame, cfg: NearDedupConfig, ctx: StepContext) -> pl.DataFrame:
    """One row per prompt: prompt_id, first row (ORDER), rows, score, and its LSH features."""
    schema = frame.collect_schema()
    _need(schema, "prompt_id", "prompt")
    kind = table_kind(schema)
    size = pl.col("responses").list.len().sum() if kind == "lists" else pl.len()
    score = _score_expr(schema, kind) if cfg.keep == "best_score" else pl.lit(None, pl.Float64)
    cols = frame.select("prompt_id", "prompt").collect()      # the input's buffers, not a copy
    if cols["prompt_id"].null_count():
        raise SchemaError("near_dedup: column 'prompt_id' is null in some rows", column="prompt_id",
                          expected="non-null string")
    # each prompt's first row; the text is only gathered when some prompt has several rows
    first = cols["prompt_id"].is_first_distinct()
    texts = cols["prompt"] if first.all() else cols["prompt"].filter(first)
    per = cols.select("prompt_id").with_row_index(ORDER).filter(first)
    del cols
    stats = frame.group_by("prompt_id").agg(size.cast(pl.Int64).alias(ROWS), score.alias(SCORE)).collect()
    per = per.join(stats, on="prompt_id", how="left", maintain_order="left")
    f = features(texts, cfg, _seed(cfg, ctx))
    n = per.height

    def full(a: np.ndarray) -> np.ndarray:   # rows for every prompt (zeros where there are no shingles)
        if len(a) == n:
            return a
        out = np.zeros((n, *a.shape[1:]), dtype=a.dtype)
        out[f.has] = a
        return out

    cols = [pl.Series(HAS, f.has), pl.Series(SIG, full(f.sig_id)), pl.Series(BANDS, full(f.keys))]
    if f.sketch is not None:
        cols.append(pl.Series(SKETCH, full(f.sketch)))
    return per.with_columns(cols)


@dataclass(frozen=True)
class NearDedupPlan:
    assignment: pl.DataFrame       # prompt_id, cluster_id, __kept (the kept prompt's id; null for kept prompts)
    info: dict[str, Any]
    summary: str


def plan_near_dedup(units: pl.DataFrame, cfg: NearDedupConfig, ctx: StepContext) -> NearDedupPlan:
    """Clusters over the per-prompt table of the whole input (prompt_units of every partition, any order)."""
    # components do not depend on row order and the representative is chosen by ORDER below, so the (wide)
    # table is used as it comes, without a sorted copy
    has = units[HAS].to_numpy()

    def rows(col: str) -> np.ndarray:           # the prompts with shingles (all of them, usually: no copy then)
        a = units[col].to_numpy()
        return a if has.all() else a[has]
    f = Features(has, rows(BANDS), rows(SIG), rows(SKETCH) if cfg.verify else None)
    labels, lsh_info = _labels(f, cfg)
    del f
    pick = {"first": ([ORDER], [False]), "most_responses": ([ROWS, ORDER], [True, False]),
            "best_score": ([SCORE, ORDER], [True, False])}[cfg.keep]
    units = units.select("prompt_id", ORDER, ROWS, SCORE).with_columns(pl.Series(LABEL, labels))
    reps = (units.sort(pick[0], descending=pick[1], nulls_last=True)
            .group_by(LABEL, maintain_order=True).agg(pl.col("prompt_id").first().alias(CLUSTER)))
    units = units.join(reps, on=LABEL, how="left", maintain_order="left")
    dup = pl.col("prompt_id") != pl.col(CLUSTER)
    assignment = units.select("prompt_id", CLUSTER, pl.when(dup).then(pl.col(CLUSTER)).alias(KEPT))
    sizes = units.group_by(LABEL).len()["len"]
    multi = sizes.filter(sizes > 1)
    dropped = units.filter(dup)
    info = {"seed": _seed(cfg, ctx), "prompts": units.height, "clusters": multi.len(),
            "prompts_in_clusters": int(multi.sum()), "largest_cluster": int(sizes.max() or 0),
            "keep": cfg.keep, "action": cfg.action, **lsh_info}
    summary = f"{_n(units.height, 'prompt')} · " + (
        f"{_n(multi.len(), 'near-duplicate cluster')} ({int(multi.sum()):,} prompts, largest "
        f"{info['largest_cluster']:,})"
        if multi.len() else "no near-duplicates")
    if cfg.action == "drop":
        info.update(prompts_dropped=dropped.height, rows_dropped=int(dropped[ROWS].sum()))
        if dropped.height:
            summary += (f" · dropped {_n(dropped.height, 'prompt')} ({_n(info['rows_dropped'], 'row')}), one kept "
                        "a cluster")
    elif multi.len():
        summary += " · flagged (action flag), none dropped"
    return NearDedupPlan(assignment, info, summary)


def apply_near_dedup(frame: pl.LazyFrame, cfg: NearDedupConfig, plan: NearDedupPlan) -> Built:
    """The input with the plan's cluster_id; with action drop, the rows of non-kept prompts dropped."""
    schema = frame.collect_schema()
    base = frame.drop(CLUSTER) if CLUSTER in schema else frame
    reason = pl.lit(None, pl.String)
    if cfg.action == "drop":
        reason = pl.when(pl.col(KEPT).is_not_null()).then(pl.lit("near-duplicate of prompt ") + pl.col(KEPT))
    df = with_prompt_columns(base, plan.assignment).with_columns(reason.alias(DROP)).drop(KEPT).collect()
    return marked_result(df, DROP, table_kind(schema), plan.info, plan.summary)


def bound_near_dedup(plan: NearDedupPlan):
    return bind_plan(apply_near_dedup, plan)


# ------------------------------------------------------------------------------ on: response (prompt-local)

def _response_dedup(frame: pl.LazyFrame, cfg: NearDedupConfig, ctx: StepContext) -> Built:
    schema = frame.collect_schema()
    _need(schema, "prompt_id", "response_id", "response")
    if cfg.keep == "best_score":
        _score_expr(schema, "responses")
    df = frame.drop(RESPONSE_CLUSTER, strict=False).with_row_index(ROW).collect()
    f = features(df["response"], cfg, _seed(cfg, ctx))
    g = prompt_key(df).to_numpy()
    labels, lsh_info = _labels(f, cfg, scope=g[f.has])
    order = [ROW] if cfg.keep == "first" else [pl.col("score").cast(pl.Float64), ROW]
    marked = df.with_columns(pl.Series(LABEL, labels))
    reps = (marked.sort(order, descending=[False] if cfg.keep == "first" else [True, False], nulls_last=True)
            .group_by(LABEL, maintain_order=True).agg(pl.col("response_id").first().alias(RESPONSE_CLUSTER)))
    marked = marked.join(reps, on=LABEL, how="left", maintain_order="left")
    dup = pl.col("response_id") != pl.col(RESPONSE_CLUSTER)
    reason = pl.lit(None, pl.String)
    if cfg.action == "drop":
        reason = pl.when(dup).then(pl.lit("near-duplicate of response ") + pl.col(RESPONSE_CLUSTER))
    marked = marked.with_columns(reason.alias(DROP))
    sizes = marked.group_by(LABEL).len()["len"]
    multi = sizes.filter(sizes > 1)
    info = {"seed": _seed(cfg, ctx), "responses": df.height, "clusters": multi.len(),
            "responses_in_clusters": int(multi.sum()), "keep": cfg.keep, "action": cfg.action, **lsh_info}
    summary = f"{_n(df.height, 'response')} · {_n(multi.len(), 'near-duplicate cluster')} within prompts " \
              f"({int(multi.sum()):,} responses)"
    dropped = int(marked[DROP].is_not_null().sum())
    if dropped:
        summary += f" · dropped {_n(dropped, 'response')}, one kept a cluster"
    return marked_result(marked.drop(ROW, LABEL), DROP, "responses", info, summary)


def build_near_dedup(frame: pl.LazyFrame, cfg: NearDedupConfig, ctx: StepContext) -> Built:
    if cfg.on == "response":
        return _response_dedup(frame, cfg, ctx)
    return apply_near_dedup(frame, cfg, plan_near_dedup(prompt_units(frame, cfg, ctx), cfg, ctx))
