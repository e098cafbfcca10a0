"""ultrafeedback: openbmb/UltraFeedback raw rows -> responses.

Row: {"source", "instruction", "models", "completions": [{"model", "response", "annotations": {<aspect>:
{"Rating": "1".."5" | "N/A", "Rationale", ...}}, "overall_score", "fine-grained_score", "critique", ...}],
"correct_answers", "incorrect_answers"}. score = overall_score; scores.<aspect> = Rating as a float for the
four aspects (helpfulness, honesty, instruction_following, truthfulness). "N/A" becomes null and is counted
in info["na_ratings"][aspect] (the response is kept; rank.by over that aspect skips it)."""
from __future__ import annotations

import polars as pl
import pyarrow as pa

from prefdata.ingest.formats.base import Format, Plan, Record, has
from prefdata.ingest.problems import Problems

ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")
RATING = pa.struct([("Rating", pa.string())])
COMPLETION = pa.struct([
    ("model", pa.string()), ("response", pa.string()),
    ("annotations", pa.struct([(a, RATING) for a in ASPECTS])),
    ("overall_score", pa.float64()), ("fine-grained_score", pa.float64()), ("critique", pa.string())])
SCHEMA = pa.schema([("source", pa.string()), ("instruction", pa.string()), ("completions", pa.list_(COMPLETION))])
NA = "N/A"


def _rating_col(aspect: str) -> str:
    return f"completions[{{item}}].annotations.{aspect}.Rating"


def transform(df: pl.DataFrame, p: Problems) -> pl.DataFrame:
    df = p.explode(df, "completions")
    df = p.reject(df, pl.col("completions").is_null(), reason="no responses", column="completions[{item}]",
                  message="completion is missing (empty list or null element)")
    c = pl.col("completions").struct
    raw = {a: c.field("annotations").struct.field(a).struct.field("Rating").str.strip_chars() for a in ASPECTS}
    df = df.with_columns([r.alias(f"_raw_{a}") for a, r in raw.items()])
    na = {}
    for a in ASPECTS:
        r = pl.col(f"_raw_{a}")
        parsed = r.cast(pl.Float64, strict=False)
        df = p.reject(df, r.is_not_null() & (r != NA) & parsed.is_null(), reason="mistyped rating",
                      column=_rating_col(a),
                      message=lambda row, a=a: f'rating {row[f"_raw_{a}"]!r} is not a number (expected "1".."5" '
                                               'or "N/A")')
        na[a] = int(df.select((r == NA).sum()).item())
        df = df.with_columns(pl.when(r == NA).then(None).otherwise(parsed).alias(f"scores.{a}"))
    p.info["na_ratings"] = na
    return df.select(
        pl.col("instruction").alias("prompt"), c.field("response").alias("response"),
        c.field("model").alias("model"), c.field("overall_score").alias("score"),
        *[f"scores.{a}" for a in ASPECTS],
        c.field("fine-grained_score").alias("fine_grained_score"), c.field("critique").alias("critique"),
        pl.col("source").alias("source"), "_row", "_item")


def plan(first: Record, mapping, path: str = "") -> Plan:
    origin = {"prompt": "instruction", "response": "completions[{item}].response",
              "score": "completions[{item}].overall_score",
              "fine_grained_score": "completions[{item}].fine-grained_score"}
    origin.update({f"scores.{a}": _rating_col(a) for a in ASPECTS})
    return Plan(kind="responses", schema=SCHEMA, required=("instruction", "completions"), transform=transform,
                origin=origin)


FORMAT = Format(
    name="ultrafeedback",
    summary="UltraFeedback rows: instruction, completions[{model, response, annotations.<aspect>.Rating, overall_score}]",
    matches=lambda r: has(r, "instruction", "completions"), plan=plan)
