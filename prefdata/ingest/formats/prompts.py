"""prompts: prompt-only sources (the input of generation steps) -> the `prompts` table kind.

  {"prompt": str, ...}                       one prompt per record
  {"prompt": [{"role", "content"}, ...]}     TRL's conversational prompt-only form: the turns go to `messages`;
                                             `prompt` is the text of a single user turn, or the
                                             "\\n\\nHuman: ...\\n\\nAssistant:" transcript of several turns
Any container (JSON Lines, parquet, a datasets folder). A mapping (--map canonical=source) may name prompt,
prompt_id, messages and images; a canonical name the source already uses is taken as is. Every other source
column (reference `tests`, an `answer`, an `image`, ...) is carried unchanged, with the type the file gives
it. prompt_id is the normalized-prompt sha256 (prefdata.ingest.ids) unless a source column provides it.
Finalize rules (prefdata.ingest.finalize): an empty prompt is an error naming file, row and column (or a
counted drop with on_error="drop"); a further record of the same prompt_id is always dropped and counted.

Auto-detected for records that have a `prompt` and none of the response-like keys other formats use."""
from __future__ import annotations

import polars as pl
import pyarrow as pa

from prefdata.errors import FormatError, IngestError
from prefdata.ingest.dialogue import render_transcript
from prefdata.ingest.formats.base import MESSAGES, Format, Plan, Record, messages_series
from prefdata.ingest.problems import Problems

_STR = pa.string()
CANONICAL = {"prompt": _STR, "prompt_id": _STR, "messages": MESSAGES, "images": pa.list_(_STR)}
# keys that mean a record already holds answers: such a file is a responses/pairs source, not prompts
ANSWER_KEYS = frozenset({"response", "responses", "chosen", "rejected", "completion", "completions", "answers",
                         "outputs"})


def matches(r: Record) -> bool:
    return isinstance(r.get("prompt"), str | list) and not ANSWER_KEYS & r.keys()


def _prompt_text(msgs: list[dict] | None) -> str | None:
    if not msgs:
        return None
    if len(msgs) == 1 and msgs[0]["role"] == "user":
        return msgs[0]["content"]
    return render_transcript(msgs)


def _bad_turns(col: str) -> pl.Expr:
    e = pl.element()
    return pl.col(col).list.eval(e.is_null() | e.struct.field("role").is_null()
                                 | e.struct.field("content").is_null()).list.any()


def plan(first: Record, mapping: dict[str, str] | None, path: str) -> Plan:
    mapping = dict(mapping or {})
    unknown = [c for c in mapping if c not in CANONICAL]
    if unknown:
        raise FormatError(f"mapping names unknown prompts column {unknown[0]!r}; known: {', '.join(CANONICAL)} "
                          "(every other source column is carried as it is)")
    for col in CANONICAL:   # identity mapping for canonical names the source already uses
        if col not in mapping and col in first and col not in mapping.values():
            mapping[col] = col
    if "prompt" not in mapping:
        raise IngestError(path, "no source column for prompts column 'prompt'; map one with --map prompt=COLUMN "
                                f"(first record has: {', '.join(sorted(first)) or 'no keys'})")
    for canon, src in mapping.items():
        if src not in first:
            raise IngestError(path, f"mapped column {src!r} (for {canon!r}) is missing; first record has: "
                                    f"{', '.join(sorted(first)) or 'no keys'}", column=src)
    conversational = isinstance(first[mapping["prompt"]], list)
    types = {**CANONICAL, "prompt": MESSAGES if conversational else _STR}
    sources: dict[str, pa.DataType] = {}
    for canon, src in mapping.items():
        if src in sources and not sources[src].equals(types[canon]):
            raise FormatError(f"source column {src!r} is mapped to columns of different types")
        sources[src] = types[canon]
    rename = dict(mapping)

    def transform(df: pl.DataFrame, p: Problems) -> pl.DataFrame:
        df = df.select(*[pl.col(src).alias(canon) for canon, src in rename.items()], "_row")
        for col in [c for c in ("prompt", "messages") if c in df.columns and df.schema[c] != pl.String]:
            df = p.reject(df, _bad_turns(col), reason=f"malformed {col} messages", column=rename[col],
                          message="a message is null or lacks 'role' or 'content'")
        if conversational:
            turns = df["prompt"].to_list()
            df = df.with_columns(pl.Series("prompt", [_prompt_text(m) for m in turns], dtype=pl.String))
            if "messages" not in rename:
                df = df.with_columns(messages_series("messages", turns))
        return df

    return Plan(kind="prompts", schema=pa.schema(list(sources.items())), required=tuple(sources),
                transform=transform, origin=dict(rename), carry_rest=True,
                info={"mapping": rename, "prompt_form": "conversational" if conversational else "text"})


FORMAT = Format(name="prompts", summary="prompt-only records (prompt text or TRL conversational prompt); every "
                                        "other column is carried (e.g. reference tests)",
                matches=matches, plan=plan, mappable=True)
