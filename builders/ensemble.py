"""`ensemble` step: combine several scorers into the overall `score`, keep the per-objective vector, and
report how much the scorers agree.

Methods (each scorer's values come from a field of `scores`):
- `zscore_mean`: per-scorer z-score (over the dataset or within each prompt), then the (weighted) mean;
- `rank_mean`: per-scorer ranks normalized to [0, 1] (1 = best, ties share the average rank), then the
  (weighted) mean — the RankDPO / Syn-Pic recipe (spec §6(c)): raw scales differ, ranks do not;
- `weighted_sum`: Σ w_k · score_k on the raw scales (the MODPO-style linear scalarization).
The `scores` struct is left intact (the per-objective vector MODPO-style training reads), so a later
`pairs` step carries it into `scores_chosen` / `scores_rejected`.

Agreement report (in the step info, which the build stores in lineage, and printed): for each scorer pair,
over every pair of responses to the same prompt — pairwise agreement (share of pairs both scorers order
the same way, ties in either excluded), Kendall τ-b per prompt (mean, median), and the share of response
pairs on which any two scorers disagree (low agreement means noisy preference labels).
τ-b is in [-1, 1] and equals scipy.stats.kendalltau(variant="b") per prompt; a prompt on which either
scorer is constant has no τ (scipy gives NaN) and is left out of the τ mean / median and of
`prompts_with_tau` (its pairs still count in pairwise agreement and the disagreement share)."""
from __future__ import annotations

import itertools
from typing import ClassVar, Literal

import polars as pl
from pydantic import Field, model_validator

from builders.base import Built, StepConfig, StepContext
from prefdata.errors import SchemaError


class EnsembleConfig(StepConfig, frozen=True):
    output_kind: ClassVar[str] = "responses"
    by: list[str] = Field(min_length=1)                  # fields of `scores`
    method: Literal["zscore_mean", "rank_mean", "weighted_sum"] = "zscore_mean"
    weights: dict[str, float] | None = None             # per scorer; required for weighted_sum
    scope: Literal["dataset", "prompt"] = "dataset"      # where z-scores / ranks are computed
    lower_is_better: list[str] = []                      # scorers whose sign is flipped first
    store_as: str | None = None                          # also write the combined value to scores.<store_as>
    agreement: bool = True

    @model_validator(mode="after")
    def _check(self):
        if len(set(self.by)) != len(self.by):
            raise ValueError("`by` lists a scorer twice")
        if self.method == "weighted_sum" and not self.weights:
            raise ValueError("method weighted_sum needs weights")
        if self.weights is not None:
            if set(self.weights) != set(self.by):
                raise ValueError(f"weights must name exactly the `by` scorers {self.by}")
            if sum(self.weights.values()) == 0:
                raise ValueError("weights sum to 0")
        unknown = set(self.lower_is_better) - set(self.by)
        if unknown:
            raise ValueError(f"lower_is_better names {sorted(unknown)} which are not in `by`")
        return self


def _normalized(col: str, method: str, scope: str) -> pl.Expr:
    x = pl.col(col)
    over = ["prompt_id"] if scope == "prompt" else None
    if method == "zscore_mean":
        mean, std = x.mean(), x.std(ddof=0)
        z = pl.when(std > 0).then((x - mean) / std).otherwise(0.0)
        return z.over(over) if over else z
    if method == "rank_mean":
        r, n = x.rank("average"), x.count()
        v = pl.when(n > 1).then((r - 1) / (n - 1)).otherwise(0.5)
        return v.over(over) if over else v
    return x


def agreement_report(df: pl.DataFrame, names: list[str]) -> dict:
    """Pairwise agreement, Kendall τ-b per prompt and disagreement share over within-prompt response pairs."""
    if len(names) < 2:
        return {}
    idx = df.select(["prompt_id", *names]).with_row_index("_i")
    pairs = idx.join(idx, on="prompt_id", suffix="_b").filter(pl.col("_i") < pl.col("_i_b"))
    sign = {n: (pl.col(n) - pl.col(f"{n}_b")).sign() for n in names}
    pairs = pairs.select(["prompt_id", *[sign[n].alias(n) for n in names]])
    out: dict = {"response_pairs": pairs.height, "scorer_pairs": {}}
    any_disagree = pl.lit(False)
    for a, b in itertools.combinations(names, 2):
        prod = pl.col(a) * pl.col(b)
        any_disagree = any_disagree | (prod < 0)
        # boolean sums and len() are unsigned (u32): cast to Int64 so conc − disc can go negative
        per = pairs.group_by("prompt_id").agg(
            conc=(prod > 0).sum(), disc=(prod < 0).sum(), n0=pl.len(),
            tie_a=(pl.col(a) == 0).sum(), tie_b=(pl.col(b) == 0).sum()
        ).with_columns(pl.col("conc", "disc", "n0", "tie_a", "tie_b").cast(pl.Int64))
        c, d = int(per["conc"].sum()), int(per["disc"].sum())
        tau = per.select(((pl.col("conc") - pl.col("disc")) /
                          ((pl.col("n0") - pl.col("tie_a")) * (pl.col("n0") - pl.col("tie_b"))).sqrt()).alias("t")
                         ).filter(pl.col("t").is_finite())["t"]
        out["scorer_pairs"][f"{a}~{b}"] = {
            "pairwise_agreement": c / (c + d) if c + d else None,
            "kendall_tau_mean": float(tau.mean()) if len(tau) else None,
            "kendall_tau_median": float(tau.median()) if len(tau) else None,
            "prompts_with_tau": len(tau)}
    out["disagreement_share"] = float(pairs.select(any_disagree.mean())[0, 0]) if pairs.height else None
    return out


def _print(report: dict, method: str) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"scorer agreement ({method}; {report['response_pairs']} within-prompt response pairs)")
    for c in ("scorers", "pairwise agreement", "Kendall τ mean", "τ median"):
        t.add_column(c)
    def f(v):
        return "—" if v is None else f"{v:.3f}"
    for k, v in report["scorer_pairs"].items():
        t.add_row(k, f(v["pairwise_agreement"]), f(v["kendall_tau_mean"]), f(v["kendall_tau_median"]))
    Console(stderr=True).print(t)
    Console(stderr=True).print(f"share of response pairs where some scorers disagree: {f(report['disagreement_share'])}")


def build_ensemble(frame: pl.LazyFrame, cfg: EnsembleConfig, ctx: StepContext) -> Built:
    df = frame.collect()
    rows_in = df.height
    if "scores" not in df.columns or not isinstance(df.schema["scores"], pl.Struct):
        raise SchemaError("ensemble needs a `scores` struct column (run the score step first)", column="scores")
    have = {f.name for f in df.schema["scores"].fields}
    missing = [n for n in cfg.by if n not in have]
    if missing:
        raise SchemaError(f"ensemble: scores has no field(s) {missing}; available: {sorted(have)}",
                          column=f"scores.{missing[0]}")
    tmp = [f"__s_{n}" for n in cfg.by]
    df = df.with_columns([(pl.col("scores").struct.field(n).cast(pl.Float64) *
                           (-1.0 if n in cfg.lower_is_better else 1.0)).alias(t) for n, t in zip(cfg.by, tmp,
                                                                                                 strict=True)])
    drops: dict[str, int] = {}
    for n, t in zip(cfg.by, tmp, strict=True):
        bad = df[t].is_null() | df[t].is_nan()
        if bad.any():
            drops[f"scores.{n} is null"] = int(bad.sum())
            df = df.filter(~bad)
    w = cfg.weights or dict.fromkeys(cfg.by, 1.0)
    combined = pl.sum_horizontal([_normalized(t, cfg.method, cfg.scope) * w[n] for n, t in zip(cfg.by, tmp,
                                                                                            strict=True)])
    if cfg.method != "weighted_sum":
        combined = combined / sum(w.values())
    df = df.with_columns(combined.cast(pl.Float64).alias("score"))
    info: dict = {"method": cfg.method, "scope": cfg.scope, "by": cfg.by, "weights": w}
    if cfg.agreement and len(cfg.by) > 1:
        info["agreement"] = agreement_report(df.select(["prompt_id", *tmp]).rename(
            dict(zip(tmp, cfg.by, strict=True))), cfg.by)
        if ctx.progress:
            _print(info["agreement"], cfg.method)
    df = df.drop(tmp)
    if cfg.store_as:
        from builders.score import with_scores
        df = with_scores(df, {cfg.store_as: df["score"].to_numpy()})
    ag = info.get("agreement", {}).get("disagreement_share")
    summary = f"{cfg.method} over {len(cfg.by)} scorers on {df.height:,} rows" + (
        f" · scorers disagree on {ag:.0%} of response pairs" if ag is not None else "")
    return Built(df.lazy(), "responses", drops=drops, rows_in=rows_in, rows_kept=df.height, info=info,
                 summary=summary)
