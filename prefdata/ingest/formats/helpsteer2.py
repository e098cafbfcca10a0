"""helpsteer2: nvidia/HelpSteer2 rows -> responses, one row per response (two per prompt in the source).

Row: {"prompt", "response", "helpfulness", "correctness", "coherence", "complexity", "verbosity"} (0..4).
The five attributes go to scores.<attribute>. score stays null: HelpSteer2 has no overall rating and none
is invented (recipes rank by e.g. `helpfulness`, or aggregate several attributes)."""
from __future__ import annotations

import polars as pl
import pyarrow as pa

from prefdata.ingest.formats.base import Format, Plan, Record, has
from prefdata.ingest.problems import Problems

ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
SCHEMA = pa.schema([("prompt", pa.string()), ("response", pa.string()), *[(a, pa.float64()) for a in ATTRIBUTES]])


def transform(df: pl.DataFrame, p: Problems) -> pl.DataFrame:
    return df.select("prompt", "response", pl.lit(None, pl.Float64).alias("score"),
                     *[pl.col(a).alias(f"scores.{a}") for a in ATTRIBUTES], "_row")


def plan(first: Record, mapping, path: str = "") -> Plan:
    return Plan(kind="responses", schema=SCHEMA, required=("prompt", "response", *ATTRIBUTES), transform=transform,
                origin={f"scores.{a}": a for a in ATTRIBUTES})


FORMAT = Format(
    name="helpsteer2", summary="HelpSteer2 rows: prompt, response, helpfulness, correctness, coherence, complexity, "
                               "verbosity",
    matches=lambda r: has(r, "prompt", "response", *ATTRIBUTES), plan=plan)
