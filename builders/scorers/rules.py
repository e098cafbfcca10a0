"""Rule verifiers (no model): 1.0 when the response satisfies the rule, else 0.0.

- exact: response equals the `reference_column` value (after optional whitespace/case normalization);
- regex: the response matches `pattern` (`forbid: true` inverts: 1.0 when it does NOT match);
- numeric: the final numeric answer (GSM8K `#### n`, LaTeX `\\boxed{n}`, "the answer is n", else the
  last number in the text) equals the reference within `abs_tol`/`rel_tol`;
- json_schema: the response (or its first ```json block) parses as JSON and validates against `schema`;
- length: chars/words within [min, max];
- format: every `must_match` pattern matches and no `must_not_match` pattern does.
All but json_schema run as polars expressions."""
from __future__ import annotations

import json
import re
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field, model_validator

from builders.base import StepConfig, StepContext
from builders.scorers import Scored, need_columns

_NUM = r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+"


class RulesScorer(StepConfig, frozen=True):
    kind: Literal["rules"]
    name: str
    rule: Literal["exact", "regex", "numeric", "json_schema", "length", "format"]
    reference_column: str | None = None          # exact, numeric
    normalize: bool = True                       # exact: strip, collapse spaces, lowercase
    pattern: str | None = None                   # regex
    forbid: bool = False                         # regex: score 1 when the pattern does NOT match
    abs_tol: float = Field(1e-6, ge=0)           # numeric
    rel_tol: float = Field(1e-9, ge=0)
    json_schema: dict[str, Any] | None = Field(None, alias="schema")   # json_schema
    unit: Literal["chars", "words"] = "chars"    # length
    min: int | None = Field(None, ge=0)
    max: int | None = Field(None, ge=0)
    must_match: list[str] = []                   # format
    must_not_match: list[str] = []

    @model_validator(mode="after")
    def _needs(self):
        need = {"exact": ["reference_column"], "numeric": ["reference_column"], "regex": ["pattern"],
                "json_schema": ["json_schema"]}.get(self.rule, [])
        missing = [n for n in need if getattr(self, n) is None]
        if missing:
            raise ValueError(f"rule {self.rule!r} needs {missing[0].replace('json_schema', 'schema')}")
        if self.rule == "length" and self.min is None and self.max is None:
            raise ValueError("rule 'length' needs min and/or max")
        if self.rule == "format" and not (self.must_match or self.must_not_match):
            raise ValueError("rule 'format' needs must_match and/or must_not_match")
        for p in [self.pattern or "", *self.must_match, *self.must_not_match]:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"invalid regex {p!r}: {e}") from None
        if self.json_schema is not None:
            from jsonschema import SchemaError, validators
            try:
                validators.validator_for(self.json_schema).check_schema(self.json_schema)
            except SchemaError as e:
                raise ValueError(f"invalid JSON schema: {e.message}") from None
        return self


def _norm(e: pl.Expr) -> pl.Expr:
    return e.cast(pl.String).str.strip_chars().str.replace_all(r"\s+", " ").str.to_lowercase()


def final_number(col: pl.Expr) -> pl.Expr:
    """The final numeric answer in a text as float64 (null when there is none)."""
    cands = [col.str.extract(r"####\s*\$?\s*(" + _NUM + ")", 1),
             col.str.extract(r"\\boxed\{\s*\$?(" + _NUM + r")\s*\}", 1),
             col.str.extract(r"(?i)answer\s*(?:is|:)\s*\$?\s*(" + _NUM + ")", 1),
             col.str.extract_all(_NUM).list.last()]
    return pl.coalesce(cands).str.replace_all(",", "").cast(pl.Float64, strict=False)


def _json_valid(texts: list[str], schema: dict) -> np.ndarray:
    from jsonschema import validators
    v = validators.validator_for(schema)(schema)
    fence = re.compile(r"```(?:json)?\s*\n(.*?)```", re.S)
    out = np.zeros(len(texts))
    for i, t in enumerate(texts):
        m = fence.search(t or "")
        try:
            doc = json.loads(m.group(1) if m else (t or ""))
        except json.JSONDecodeError:
            continue
        out[i] = float(v.is_valid(doc))
    return out


def score(df: pl.DataFrame, cfg: RulesScorer, ctx: StepContext) -> Scored:
    need_columns(df, ["response"] + ([cfg.reference_column] if cfg.reference_column else []), cfg.name)
    r = pl.col("response").fill_null("")
    if cfg.rule == "json_schema":
        return Scored.complete(_json_valid(df["response"].to_list(), cfg.json_schema), {"rule": cfg.rule})
    if cfg.rule == "exact":
        ref = pl.col(cfg.reference_column)
        ok = (_norm(r) == _norm(ref)) if cfg.normalize else (r == ref.cast(pl.String))
    elif cfg.rule == "regex":
        ok = r.str.contains(cfg.pattern)
        ok = ~ok if cfg.forbid else ok
    elif cfg.rule == "numeric":
        got, want = final_number(r), pl.col(cfg.reference_column).cast(pl.String).str.replace_all(",", "") \
            .cast(pl.Float64, strict=False)
        ok = (got - want).abs() <= pl.max_horizontal(pl.lit(cfg.abs_tol), cfg.rel_tol * want.abs())
    elif cfg.rule == "length":
        n = r.str.len_chars() if cfg.unit == "chars" else r.str.extract_all(r"\S+").list.len()
        ok = pl.lit(True)
        if cfg.min is not None:
            ok = ok & (n >= cfg.min)
        if cfg.max is not None:
            ok = ok & (n <= cfg.max)
    else:  # format
        ok = pl.lit(True)
        for p in cfg.must_match:
            ok = ok & r.str.contains(p)
        for p in cfg.must_not_match:
            ok = ok & ~r.str.contains(p)
    vals = df.select(ok.fill_null(False).cast(pl.Float64).alias("v"))["v"].to_numpy()
    return Scored.complete(vals, {"rule": cfg.rule, "pass_rate": float(vals.mean()) if len(vals) else None})
