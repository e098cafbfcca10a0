"""`score` step: run scorers over `responses` and add one float64 field per scorer to the `scores` struct.

Scorer kinds (one module each in builders/scorers/): reward_model, clip, rules, code_tests, judge.
Rows a scorer cannot score (unreadable image, unparsable judgment, no tests) are dropped and counted by
reason (or kept with a null score when `on_unscorable: keep`). `set_score` copies one scorer's value into
the overall `score` column (use the `ensemble` step to combine several)."""
from __future__ import annotations

import importlib
from typing import Annotated, ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import Field, model_validator

from builders.base import Built, StepConfig, StepContext
from builders.scorers.clip import ClipScorer
from builders.scorers.code_tests import CodeTestsScorer
from builders.scorers.judge import JudgeScorer
from builders.scorers.reward_model import RewardModelScorer
from builders.scorers.rules import RulesScorer

Scorer = Annotated[RewardModelScorer | ClipScorer | RulesScorer | CodeTestsScorer | JudgeScorer,
                   Field(discriminator="kind")]


class ScoreConfig(StepConfig, frozen=True):
    output_kind: ClassVar[str] = "responses"
    scorers: list[Scorer] = Field(min_length=1)
    set_score: str | None = None                 # copy this scorer's value into `score`
    # move (not copy) the set_score value out of `scores`, so `scores` holds only the other objectives —
    # the layout MODPO training reads (every field of scores_chosen/scores_rejected is an "other" reward)
    move_set_score: bool = False
    on_unscorable: Literal["drop", "keep"] = "drop"

    @model_validator(mode="after")
    def _names(self):
        names = [s.name for s in self.scorers]
        if len(set(names)) != len(names):
            raise ValueError(f"scorer names must be unique, got {names}")
        if self.set_score is not None and self.set_score not in names:
            raise ValueError(f"set_score {self.set_score!r} is not a scorer name ({names})")
        if self.move_set_score and (self.set_score is None or len(names) < 2):
            raise ValueError("move_set_score needs set_score and at least one other scorer")
        return self


def with_scores(df: pl.DataFrame, new: dict[str, np.ndarray]) -> pl.DataFrame:
    """Add/replace float64 fields of the `scores` struct (created when absent)."""
    keep = []
    if "scores" in df.columns and isinstance(df.schema["scores"], pl.Struct):
        keep = [f.name for f in df.schema["scores"].fields if f.name not in new]
    fields = [pl.col("scores").struct.field(f).cast(pl.Float64).alias(f) for f in keep]
    fields += [pl.Series(k, v, dtype=pl.Float64).fill_nan(None) for k, v in new.items()]
    return df.with_columns(pl.struct(fields).alias("scores"))


def build_score(frame: pl.LazyFrame, cfg: ScoreConfig, ctx: StepContext) -> Built:
    df = frame.collect()
    rows_in = df.height
    values: dict[str, np.ndarray] = {}
    reason = [None] * df.height
    info: dict = {}
    for sc in cfg.scorers:
        mod = importlib.import_module(f"builders.scorers.{sc.kind}")
        res = mod.score(df, sc, ctx)
        values[sc.name] = res.values
        reason = [r or n for r, n in zip(reason, res.reasons, strict=True)]   # first reason wins
        info[sc.name] = {"kind": sc.kind, **res.info,
                         "mean": float(np.nanmean(res.values)) if np.isfinite(res.values).any() else None}
        for col, vals in res.extra.items():
            df = df.with_columns(pl.Series(col, vals))
    if cfg.set_score:
        df = df.with_columns(pl.Series("score", values[cfg.set_score], dtype=pl.Float64).fill_nan(None))
        if cfg.move_set_score:
            values = {k: v for k, v in values.items() if k != cfg.set_score}
    df = with_scores(df, values)
    drops: dict[str, int] = {}
    if cfg.on_unscorable == "drop":
        bad = pl.Series([r is not None for r in reason], dtype=pl.Boolean)
        for r in reason:
            if r is not None:
                drops[r] = drops.get(r, 0) + 1
        df = df.filter(~bad)
    summary = f"{len(cfg.scorers)} scorer(s) [{', '.join(s.name for s in cfg.scorers)}] on {df.height:,} rows" + (
        f" · dropped {sum(drops.values())} unscorable" if drops else "")
    return Built(df.lazy(), "responses", drops=drops, rows_in=rows_in, rows_kept=df.height, info=info,
                 summary=summary)
