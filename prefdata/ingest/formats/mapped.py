"""jsonl / parquet / hf: any table with a column mapping {canonical column: source column}.

Canonical columns a mapping may name: responses - prompt, response, prompt_id, response_id, model, score,
rank, video, images, scores.<name>; pairs - prompt, chosen, rejected, prompt_id, chosen_id, rejected_id,
score_chosen, score_rejected, weight, images, video_chosen, video_rejected, caption. A canonical column the
mapping does not name is taken from the source column of the same name when the first record has it. The
kind follows the mapped columns: chosen/rejected -> pairs, otherwise responses (prompt-only sources: format
`prompts`). Unmapped source columns are carried only when named in read_source's `carry`. A mapped source
column missing from the first record is an IngestError naming it."""
from __future__ import annotations

import polars as pl
import pyarrow as pa

from prefdata.errors import FormatError, IngestError
from prefdata.ingest.formats.base import Format, Plan, Record, invalid_rank
from prefdata.ingest.problems import Problems

_STR, _NUM, _LIST = pa.string(), pa.float64(), pa.list_(pa.string())
RESPONSES = {"prompt": _STR, "response": _STR, "prompt_id": _STR, "response_id": _STR, "model": _STR,
             "score": _NUM, "rank": _NUM, "video": _STR, "images": _LIST}
PAIRS = {"prompt": _STR, "chosen": _STR, "rejected": _STR, "prompt_id": _STR, "chosen_id": _STR,
         "rejected_id": _STR, "score_chosen": _NUM, "score_rejected": _NUM, "weight": _NUM, "images": _LIST,
         "video_chosen": _STR, "video_rejected": _STR, "caption": _STR}
REQUIRED = {"responses": ("prompt", "response"), "pairs": ("prompt", "chosen", "rejected")}


def _canonical_type(kind: str, col: str) -> pa.DataType:
    if col.startswith("scores.") and len(col) > len("scores.") and kind == "responses":
        return _NUM
    table = RESPONSES if kind == "responses" else PAIRS
    if col not in table:
        known = sorted(table) + (["scores.<name>"] if kind == "responses" else [])
        raise FormatError(f"mapping names unknown {kind} column {col!r}; known: {', '.join(known)}")
    return table[col]


def make_plan(first: Record, mapping: dict[str, str] | None, path: str) -> Plan:
    mapping = dict(mapping or {})
    kind = "pairs" if {"chosen", "rejected"} & set(mapping) or (
        not mapping.keys() & {"response"} and {"chosen", "rejected"} <= first.keys()) else "responses"
    for col in mapping:
        _canonical_type(kind, col)
    table = RESPONSES if kind == "responses" else PAIRS
    for col in table:   # identity mapping for canonical names the source already uses
        if col not in mapping and col in first and col not in mapping.values():
            mapping[col] = col
    for col in REQUIRED[kind]:
        if col not in mapping:
            hint = " (a prompt-only source: use --format prompts)" if col == "response" else ""
            raise IngestError(path, f"no source column for {kind} column {col!r}; map one with --map {col}=COLUMN "
                                    f"(first record has: {', '.join(sorted(first)) or 'no keys'}){hint}", row=None)
    for canon, src in mapping.items():
        if src not in first:
            raise IngestError(path, f"mapped column {src!r} (for {canon!r}) is missing; first record has: "
                                    f"{', '.join(sorted(first)) or 'no keys'}", column=src)
    sources = {}
    for canon, src in mapping.items():
        typ = _canonical_type(kind, canon)
        if src in sources and not sources[src].equals(typ):
            raise FormatError(f"source column {src!r} is mapped to columns of different types")
        sources[src] = typ
    schema = pa.schema(list(sources.items()))
    rename = dict(mapping)

    def transform(df: pl.DataFrame, p: Problems) -> pl.DataFrame:
        cols = [pl.col(src).alias(canon) for canon, src in rename.items()]
        if "rank" in rename:
            r = pl.col(rename["rank"])
            df = p.reject(df, invalid_rank(r), reason="invalid rank",
                          column=rename["rank"], message=lambda row: f"rank {row[rename['rank']]} is not a whole "
                                                                      "number >= 1")
            cols = [c if canon != "rank" else pl.col(rename["rank"]).cast(pl.Int32).alias("rank")
                    for c, canon in zip(cols, rename, strict=True)]
        return df.select(*cols, "_row")

    return Plan(kind=kind, schema=schema, required=tuple(sources), transform=transform,
                origin={canon: src for canon, src in rename.items()}, info={"mapping": rename})


def _generic(name: str, container: str) -> Format:
    return Format(name=name, summary=f"any {container} table with a column mapping (--map canonical=source)",
                  matches=None, plan=make_plan, container=container)


FORMATS = [_generic("jsonl", "jsonl"), _generic("parquet", "parquet"), _generic("hf", "hf")]
