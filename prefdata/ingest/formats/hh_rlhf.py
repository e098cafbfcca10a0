"""hh-rlhf: Anthropic HH-RLHF rows {"chosen", "rejected"}, each a whole transcript
"\\n\\nHuman: ...\\n\\nAssistant: ...". -> pairs.

The prompt is the longest shared prefix that ends at an "\\n\\nAssistant:" turn boundary (TRL's implicit-prompt
convention, kept as a string: prompt + chosen == the source's chosen text exactly); `messages` holds the
prefix's turns as {role: user|assistant, content}. Scores are null (a human preference, no rating), weight 1,
stage 0, strategy "human"."""
from __future__ import annotations

import polars as pl
import pyarrow as pa

from prefdata.ingest.dialogue import parse_transcript, split_at_last_assistant
from prefdata.ingest.formats.base import Format, Plan, Record, has, messages_series
from prefdata.ingest.problems import Problems

SCHEMA = pa.schema([("chosen", pa.string()), ("rejected", pa.string())])


def transform(df: pl.DataFrame, p: Problems) -> pl.DataFrame:
    for col in ("chosen", "rejected"):
        df = p.reject(df, pl.col(col).is_null(), reason=f"missing {col}", column=col,
                      message=f"missing or null {col} (expected a dialogue transcript string)")
    prompts, chosen, rejected, messages = [], [], [], []
    # a Python loop: the split is per-row string work with no vectorised equivalent; linear in input size
    for c, r in zip(df["chosen"].to_list(), df["rejected"].to_list(), strict=True):
        cut = split_at_last_assistant(c, r)
        msgs = parse_transcript(c[:cut]) if cut is not None else None
        if msgs is None:
            prompts.append(None)
            chosen.append(c)
            rejected.append(r)
            messages.append(None)
            continue
        prompts.append(c[:cut])
        chosen.append(c[cut:])
        rejected.append(r[cut:])
        messages.append(msgs)
    df = df.with_columns(pl.Series("prompt", prompts, dtype=pl.String), pl.Series("chosen", chosen, dtype=pl.String),
                         pl.Series("rejected", rejected, dtype=pl.String),
                         messages_series("messages", messages))
    df = p.reject(df, pl.col("prompt").is_null(), reason="no shared dialogue prefix", column="chosen",
                  message='chosen and rejected share no dialogue prefix ending at "\\n\\nAssistant:" '
                          '(expected "\\n\\nHuman: ...\\n\\nAssistant: ..." transcripts)')
    return df.select("prompt", "messages", "chosen", "rejected", "_row")


def plan(first: Record, mapping, path: str = "") -> Plan:
    return Plan(kind="pairs", schema=SCHEMA, required=("chosen", "rejected"), transform=transform,
                strategy="human")


def _is_transcript(v) -> bool:
    return isinstance(v, str) and v.lstrip(" ").startswith("\n\nHuman:")


FORMAT = Format(
    name="hh-rlhf", summary="HH-RLHF rows: chosen, rejected full '\\n\\nHuman: ... \\n\\nAssistant: ...' transcripts",
    matches=lambda r: has(r, "chosen", "rejected") and "prompt" not in r and _is_transcript(r["chosen"]),
    plan=plan, refines="trl")
