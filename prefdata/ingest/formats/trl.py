"""trl: TRL's dataset formats.

Preference -> pairs (strategy "trl"):
  standard        {"prompt": str, "chosen": str, "rejected": str}
  implicit prompt {"chosen": str, "rejected": str}: prompt = the shared prefix (TRL's `extract_prompt` rule: a
                  space just before the divergence goes to the completions)
  conversational  the same keys holding lists of {"role", "content"}; implicit conversational prompts are the
                  shared leading messages. The prompt turns go to `messages`; `prompt` is the text of a single
                  user message, or for several turns the "\\n\\nHuman: ...\\n\\nAssistant:" transcript of them.
                  chosen/rejected must each be one message (its content becomes the string).
Unpaired (KTO) {"prompt", "completion", "label": bool} -> responses with score 1.0 (label true) or 0.0; a
prompt with a single completion is kept (unpaired data needs no second response).
The form is decided by the first record; a later record in another form is a mistyped-column error."""
from __future__ import annotations

import polars as pl
import pyarrow as pa

from prefdata.errors import IngestError
from prefdata.ingest.dialogue import render_transcript, trl_implicit_split
from prefdata.ingest.formats.base import MESSAGES, Format, Plan, Record, has, messages_series, reject_bad_messages
from prefdata.ingest.problems import Problems


def _typ(value) -> pa.DataType:
    return MESSAGES if isinstance(value, list) else pa.string()


def _prompt_text(msgs: list[dict] | str) -> str:
    if isinstance(msgs, str):
        return msgs
    if len(msgs) == 1 and msgs[0]["role"] == "user":
        return msgs[0]["content"]
    return render_transcript(msgs)


def _one_message(msgs: list[dict] | None) -> str | None:
    if msgs is None or len(msgs) != 1:
        return None
    return msgs[0]["content"]


def _bad_completion(df: pl.DataFrame, p: Problems, col: str, raw: list) -> pl.DataFrame:
    return p.reject(df, pl.col(col).is_null(), reason="not one completion message", column=col,
                    message=lambda r: f"expected exactly one message, got {len(raw[r['_i']] or [])}")


def _conversational(df: pl.DataFrame, p: Problems, explicit: bool) -> pl.DataFrame:
    for col in (["prompt"] if explicit and df.schema["prompt"] != pl.String else []) + ["chosen", "rejected"]:
        df = reject_bad_messages(df, p, col)
    rows = df.select(*(["prompt"] if explicit else []), "chosen", "rejected").to_dicts()
    prompt_msgs, chosen_msgs, rejected_msgs = [], [], []
    for r in rows:   # per-row list surgery; linear
        c, j = r["chosen"] or [], r["rejected"] or []
        if explicit:
            prompt_msgs.append(r["prompt"])
        else:
            cut = trl_implicit_split(c, j)
            prompt_msgs.append(c[:cut])
            c, j = c[cut:], j[cut:]
        chosen_msgs.append(c if r["chosen"] is not None else None)
        rejected_msgs.append(j if r["rejected"] is not None else None)
    df = df.with_columns(pl.int_range(pl.len()).alias("_i"),
                         messages_series("messages", [m if isinstance(m, list) else None for m in prompt_msgs]),
                         pl.Series("prompt", [_prompt_text(m) if m else None for m in prompt_msgs], dtype=pl.String),
                         pl.Series("chosen", [_one_message(m) for m in chosen_msgs], dtype=pl.String),
                         pl.Series("rejected", [_one_message(m) for m in rejected_msgs], dtype=pl.String))
    df = p.reject(df, pl.col("prompt").is_null(), reason="no prompt", column="prompt" if explicit else "chosen",
                  message="no prompt messages" if explicit else "chosen and rejected share no leading message")
    df = _bad_completion(df, p, "chosen", chosen_msgs)
    df = _bad_completion(df, p, "rejected", rejected_msgs)
    return df.select("prompt", "messages", "chosen", "rejected", "_row")


def _implicit_strings(df: pl.DataFrame, p: Problems) -> pl.DataFrame:
    for col in ("chosen", "rejected"):
        df = p.reject(df, pl.col(col).is_null(), reason=f"missing {col}", column=col, message=f"missing {col}")
    prompts, chosen, rejected = [], [], []
    for c, r in zip(df["chosen"].to_list(), df["rejected"].to_list(), strict=True):
        cut = trl_implicit_split(c, r)
        prompts.append(c[:cut])
        chosen.append(c[cut:])
        rejected.append(r[cut:])
    return df.with_columns(pl.Series("prompt", prompts, dtype=pl.String), pl.Series("chosen", chosen, dtype=pl.String),
                           pl.Series("rejected", rejected, dtype=pl.String)).select("prompt", "chosen", "rejected",
                                                                                   "_row")


def _unpaired(df: pl.DataFrame, p: Problems) -> pl.DataFrame:
    df = p.reject(df, pl.col("label").is_null(), reason="missing label", column="label",
                  message="missing label (expected true/false)")
    for col in ("prompt", "completion"):
        if df.schema[col] != pl.String:
            df = reject_bad_messages(df, p, col)
    if df.schema["prompt"] != pl.String:
        msgs = df["prompt"].to_list()
        df = df.with_columns(pl.Series("messages", msgs),
                             pl.Series("prompt", [_prompt_text(m) if m else None for m in msgs], dtype=pl.String))
    if df.schema["completion"] != pl.String:
        completions = df["completion"].to_list()
        df = df.with_columns(pl.int_range(pl.len()).alias("_i"),
                             pl.Series("completion", [_one_message(m) for m in completions], dtype=pl.String))
        df = _bad_completion(df, p, "completion", completions)
    extra = ["messages"] if "messages" in df.columns else []
    return df.select("prompt", *extra, pl.col("completion").alias("response"),
                     pl.col("label").cast(pl.Float64).alias("score"), "_row")


def plan(first: Record, mapping, path: str = "") -> Plan:
    if has(first, "completion", "label"):
        conv = isinstance(first.get("completion"), list)
        schema = pa.schema([("prompt", _typ(first.get("prompt"))), ("completion", _typ(first.get("completion"))),
                            ("label", pa.bool_())])
        return Plan(kind="responses", schema=schema, required=("prompt", "completion", "label"),
                    transform=_unpaired, min_responses=1, origin={"response": "completion", "score": "label"},
                    info={"trl_form": "unpaired" + (" conversational" if conv else "")})
    if not has(first, "chosen", "rejected"):
        raise IngestError(path, "missing columns for TRL: need prompt/chosen/rejected, chosen/rejected or "
                                f"prompt/completion/label (first record has: {', '.join(sorted(first)) or 'no keys'})",
                          row=1)
    conv = isinstance(first.get("chosen"), list)
    explicit = "prompt" in first
    fields = [("chosen", _typ(first["chosen"])), ("rejected", _typ(first["chosen"]))]
    if explicit:
        fields.insert(0, ("prompt", _typ(first["prompt"])))
    if conv:
        def transform(df, p):
            return _conversational(df, p, explicit)
    elif explicit:
        def transform(df, p):
            if df.schema["prompt"] != pl.String:   # conversational prompt, string completions
                df = reject_bad_messages(df, p, "prompt")
                msgs = df["prompt"].to_list()
                df = df.with_columns(messages_series("messages", msgs),
                                     pl.Series("prompt", [_prompt_text(m) if m else None for m in msgs],
                                               dtype=pl.String))
                return df.select("prompt", "messages", "chosen", "rejected", "_row")
            return df.select("prompt", "chosen", "rejected", "_row")
    else:
        transform = _implicit_strings
    form = ("conversational" if conv else "standard") + ("" if explicit else " implicit prompt")
    return Plan(kind="pairs", schema=pa.schema(fields), required=tuple(n for n, _ in fields), transform=transform,
                strategy="trl", info={"trl_form": form})


def _matches(r: Record) -> bool:
    return has(r, "chosen", "rejected") or has(r, "prompt", "completion", "label")


FORMAT = Format(
    name="trl", summary="TRL formats: prompt/chosen/rejected, chosen/rejected (implicit prompt), conversational "
                        "lists of {role, content}, or unpaired prompt/completion/label",
    matches=_matches, plan=plan)
