"""`dedup` and `filter` steps: drop duplicate, empty and out-of-bounds texts, each with a reason.

dedup (responses): within a prompt, `exact` compares the response text as is; `normalized` compares it
after Unicode NFKC, case folding and whitespace collapsing, so "Yes." and " yes. " are one response.
The first occurrence is kept (`keep: first`), or the best-scored one (`keep: best_score`; input
position breaks ties), since a duplicate's score is the same judgement made twice.

filter (responses or pairs): empty / whitespace-only texts, min/max length in characters (Unicode
code points) and in whitespace tokens, and a maximum prompt length. On pairs the text limits apply to
both chosen and rejected, and a pair whose chosen equals its rejected is dropped. Each row gets the
first reason that applies, in the order the checks are listed above."""
from __future__ import annotations

from typing import ClassVar, Literal

import polars as pl
from pydantic import Field, model_validator

from builders.base import Built, StepConfig, StepContext
from builders.rank import ROW, count_reasons
from prefdata.errors import SchemaError


def normalize_text(e: pl.Expr) -> pl.Expr:
    return e.str.normalize("NFKC").str.to_lowercase().str.replace_all(r"\s+", " ").str.strip_chars()


class DedupConfig(StepConfig):
    output_kind: ClassVar[str | None] = None
    mode: Literal["exact", "normalized"] = "normalized"
    keep: Literal["first", "best_score"] = "first"

    def label(self) -> str:
        return f"{self.mode} text, keep {self.keep.replace('_', ' ')}"


def _need(schema: pl.Schema, step: str, *cols: str) -> None:
    for c in cols:
        if c not in schema:
            raise SchemaError(f"{step}: input has no column {c!r}", column=c, expected="string")


def build_dedup(frame: pl.LazyFrame, cfg: DedupConfig, ctx: StepContext) -> Built:
    schema = frame.collect_schema()
    _need(schema, "dedup", "prompt_id", "response")
    if cfg.keep == "best_score":
        _need(schema, "dedup", "score")
    key = pl.col("response") if cfg.mode == "exact" else normalize_text(pl.col("response"))
    order = pl.col(ROW) if cfg.keep == "first" else pl.struct(-pl.col("score").fill_null(float("-inf")), ROW)
    reason = "duplicate response (exact)" if cfg.mode == "exact" else "duplicate response (normalized text)"
    df = frame.with_row_index(ROW).with_columns(__key=key).with_columns(
        __drop=pl.when(order.rank("ordinal").over(["prompt_id", "__key"]) > 1).then(pl.lit(reason))).collect()
    drops = count_reasons(df, "__drop")
    out = df.filter(pl.col("__drop").is_null()).drop(ROW, "__key", "__drop")
    dup_prompts = df.filter(pl.col("__drop").is_not_null()).select(pl.col("prompt_id").n_unique()).item()
    info = {"duplicates": sum(drops.values()), "prompts_with_duplicates": dup_prompts}
    summary = f"kept {out.height:,} · {sum(drops.values()):,} duplicates in {dup_prompts:,} prompts"
    return Built(out.lazy(), "responses", drops=drops, rows_in=df.height, rows_kept=out.height, info=info,
                 summary=summary)


class FilterConfig(StepConfig):
    output_kind: ClassVar[str | None] = None
    drop_empty: bool = True
    min_chars: int | None = Field(None, ge=0)
    max_chars: int | None = Field(None, ge=1)
    min_tokens: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    max_prompt_chars: int | None = Field(None, ge=1)
    max_prompt_tokens: int | None = Field(None, ge=1)
    drop_identical_pairs: bool = True                 # pairs: chosen == rejected

    @model_validator(mode="after")
    def _bounds(self):
        for lo, hi in (("min_chars", "max_chars"), ("min_tokens", "max_tokens")):
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and a > b:
                raise ValueError(f"{lo} ({a}) is larger than {hi} ({b})")
        return self

    def label(self) -> str:
        parts = ["drop empty"] if self.drop_empty else []
        for name in ("min_chars", "max_chars", "min_tokens", "max_tokens", "max_prompt_chars", "max_prompt_tokens"):
            if getattr(self, name) is not None:
                parts.append(f"{name} {getattr(self, name)}")
        return ", ".join(parts) or "no checks"


def _text_checks(cfg: FilterConfig, texts: list[str]) -> list[tuple[pl.Expr, str]]:
    """(row fails, reason) in priority order; on pairs a check fails if any of `texts` fails it."""
    def anyof(f) -> pl.Expr:
        return pl.any_horizontal([f(pl.col(t)) for t in texts])

    def toks(e: pl.Expr) -> pl.Expr:
        return e.str.count_matches(r"\S+")

    checks = []
    if cfg.drop_empty:
        checks.append((anyof(lambda e: e.str.strip_chars().str.len_chars() == 0), "empty response"))
    if cfg.min_chars is not None:
        checks.append((anyof(lambda e: e.str.len_chars() < cfg.min_chars), f"shorter than {cfg.min_chars} chars"))
    if cfg.max_chars is not None:
        checks.append((anyof(lambda e: e.str.len_chars() > cfg.max_chars), f"longer than {cfg.max_chars} chars"))
    if cfg.min_tokens is not None:
        checks.append((anyof(lambda e: toks(e) < cfg.min_tokens), f"fewer than {cfg.min_tokens} tokens"))
    if cfg.max_tokens is not None:
        checks.append((anyof(lambda e: toks(e) > cfg.max_tokens), f"more than {cfg.max_tokens} tokens"))
    if cfg.max_prompt_chars is not None:
        checks.append((pl.col("prompt").str.len_chars() > cfg.max_prompt_chars,
                       f"prompt longer than {cfg.max_prompt_chars} chars"))
    if cfg.max_prompt_tokens is not None:
        checks.append((toks(pl.col("prompt")) > cfg.max_prompt_tokens,
                       f"prompt more than {cfg.max_prompt_tokens} tokens"))
    return checks


def build_filter(frame: pl.LazyFrame, cfg: FilterConfig, ctx: StepContext) -> Built:
    schema = frame.collect_schema()
    kind = "pairs" if "chosen" in schema and "rejected" in schema else "responses"
    texts = ["chosen", "rejected"] if kind == "pairs" else ["response"]
    _need(schema, "filter", *texts)
    if cfg.max_prompt_chars is not None or cfg.max_prompt_tokens is not None:
        _need(schema, "filter", "prompt")
    checks = _text_checks(cfg, texts)
    if kind == "pairs" and cfg.drop_identical_pairs:
        checks.append((pl.col("chosen") == pl.col("rejected"), "chosen equals rejected"))
    reason = pl.lit(None, pl.String)
    for failed, why in reversed(checks):
        reason = pl.when(failed).then(pl.lit(why)).otherwise(reason)
    df = frame.with_row_index(ROW).with_columns(__drop=reason).collect()
    drops = count_reasons(df, "__drop")
    out = df.filter(pl.col("__drop").is_null()).drop(ROW, "__drop")
    summary = f"kept {out.height:,}"
    if drops:
        summary += " · dropped " + ", ".join(f"{n:,} ({r})" for r, n in drops.items())
    return Built(out.lazy(), kind, drops=drops, rows_in=df.height, rows_kept=out.height,
                 info={"checks": [why for _, why in checks]}, summary=summary)
