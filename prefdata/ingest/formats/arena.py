"""arena: the bundled sample (arena-bench-v1 questions, 7 model answers each, GPT-4 judge score 1-10).

Row: {"question_id", "prompt", "completions": [{"model", "answer_id", "response", "score", "judgment"}]}.
One responses row per completion: prompt_id = question_id, response_id = answer_id, score = the judge score
(null stays null; the rank step drops it with a reason), scores.gpt4_judge = the same score, judgment kept."""
from __future__ import annotations

import polars as pl
import pyarrow as pa

from prefdata.ingest.formats.base import Format, Plan, Record, has
from prefdata.ingest.problems import Problems

COMPLETION = pa.struct([("model", pa.string()), ("answer_id", pa.string()), ("response", pa.string()),
                        ("score", pa.float64()), ("judgment", pa.string())])
SCHEMA = pa.schema([("question_id", pa.string()), ("prompt", pa.string()), ("completions", pa.list_(COMPLETION))])


def transform(df: pl.DataFrame, p: Problems) -> pl.DataFrame:
    df = p.explode(df, "completions")
    df = p.reject(df, pl.col("completions").is_null(), reason="no responses", column="completions[{item}]",
                  message="completion is missing (empty list or null element)")
    c = pl.col("completions").struct
    return df.select(
        pl.col("question_id").alias("prompt_id"), "prompt",
        c.field("answer_id").alias("response_id"), c.field("response").alias("response"),
        c.field("model").alias("model"), c.field("score").alias("score"),
        c.field("score").alias("scores.gpt4_judge"), c.field("judgment").alias("judgment"),
        "_row", "_item")


def plan(first: Record, mapping, path: str = "") -> Plan:
    return Plan(kind="responses", schema=SCHEMA, required=("prompt", "completions"), transform=transform,
                origin={"prompt_id": "question_id", "response_id": "completions[{item}].answer_id",
                        "response": "completions[{item}].response", "score": "completions[{item}].score",
                        "scores.gpt4_judge": "completions[{item}].score"})


FORMAT = Format(
    name="arena", summary="arena-bench rows: question_id, prompt, completions[{model, answer_id, response, score}]",
    matches=lambda r: has(r, "question_id", "prompt", "completions"), plan=plan)
