"""nectar: berkeley-nest/Nectar rows -> responses with `rank` (1 = best).

Row: {"prompt": "\\n\\nHuman: ...\\n\\nAssistant:", "answers": [{"answer", "model", "rank"}], "turns",
"num_responses", "good_natured", "source"}. The prompt string is kept as is and its turns parsed into
`messages`. score stays null: Nectar has ranks, not ratings, and a score is not invented from them (recipes
rank by `rank`). Ranks must be whole numbers >= 1."""
from __future__ import annotations

import polars as pl
import pyarrow as pa

from prefdata.ingest.dialogue import parse_transcript
from prefdata.ingest.formats.base import Format, Plan, Record, has, invalid_rank, messages_series
from prefdata.ingest.problems import Problems

ANSWER = pa.struct([("answer", pa.string()), ("model", pa.string()), ("rank", pa.float64())])
SCHEMA = pa.schema([("prompt", pa.string()), ("answers", pa.list_(ANSWER)), ("good_natured", pa.bool_())])


def transform(df: pl.DataFrame, p: Problems) -> pl.DataFrame:
    # parse each distinct prompt once, before the explode multiplies them
    prompts = df["prompt"].to_list()
    df = df.with_columns(messages_series("messages", [parse_transcript(t) if t is not None else None
                                                      for t in prompts]))
    df = p.explode(df, "answers")
    df = p.reject(df, pl.col("answers").is_null(), reason="no responses", column="answers[{item}]",
                  message="answer is missing (empty list or null element)")
    a = pl.col("answers").struct
    rank = a.field("rank")
    df = p.reject(df, invalid_rank(rank), reason="invalid rank",
                  column="answers[{item}].rank",
                  message=lambda r: f"rank {r['answers']['rank']} is not a whole number >= 1")
    return df.select(
        "prompt", "messages", a.field("answer").alias("response"), a.field("model").alias("model"),
        pl.lit(None, pl.Float64).alias("score"), rank.cast(pl.Int32).alias("rank"), "good_natured", "_row", "_item")


def plan(first: Record, mapping, path: str = "") -> Plan:
    return Plan(kind="responses", schema=SCHEMA, required=("prompt", "answers"), transform=transform,
                origin={"response": "answers[{item}].answer", "rank": "answers[{item}].rank"})


FORMAT = Format(
    name="nectar", summary="Nectar rows: prompt, answers[{answer, model, rank}]",
    matches=lambda r: has(r, "prompt", "answers"), plan=plan)
