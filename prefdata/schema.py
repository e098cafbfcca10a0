"""Canonical Arrow schemas (responses, pairs, lists) and their validation.

The column names are the data contract in DESIGN.md. Extra columns are allowed and carried along.
Validation names the column, the expected type and the first offending row, so a user can find
the problem in their file."""
from __future__ import annotations

from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from prefdata.errors import SchemaError

Kind = Literal["prompts", "responses", "pairs", "lists"]

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)

# (field, required, non_null). `scores*` structs have free field names, each float64.
# prompts: the input of generation steps (no responses yet); extra columns (e.g. reference `tests`) are carried
_PROMPTS = [
    (pa.field("prompt_id", pa.string()), True, True),
    (pa.field("prompt", pa.string()), True, True),
    (pa.field("messages", MESSAGES), False, False),
    (pa.field("images", pa.list_(pa.string())), False, False),
]

_RESPONSES = [
    (pa.field("prompt_id", pa.string()), True, True),
    (pa.field("prompt", pa.string()), True, True),
    (pa.field("messages", MESSAGES), False, False),
    (pa.field("response_id", pa.string()), True, True),
    (pa.field("response", pa.string()), True, True),
    (pa.field("model", pa.string()), False, False),
    (pa.field("score", pa.float64()), False, False),
    (pa.field("scores", pa.struct([])), False, False),
    (pa.field("rank", pa.int32()), False, False),
    (pa.field("images", pa.list_(pa.string())), False, False),
    (pa.field("video", pa.string()), False, False),
]

_PAIRS = [
    (pa.field("prompt_id", pa.string()), True, True),
    (pa.field("prompt", pa.string()), True, True),
    (pa.field("chosen", pa.string()), True, True),
    (pa.field("rejected", pa.string()), True, True),
    (pa.field("chosen_id", pa.string()), True, True),
    (pa.field("rejected_id", pa.string()), True, True),
    (pa.field("score_chosen", pa.float64()), True, False),
    (pa.field("score_rejected", pa.float64()), True, False),
    (pa.field("margin", pa.float64()), True, False),
    (pa.field("weight", pa.float64()), True, True),
    (pa.field("stage", pa.int32()), True, True),
    (pa.field("strategy", pa.string()), True, True),
    (pa.field("messages", MESSAGES), False, False),
    (pa.field("images", pa.list_(pa.string())), False, False),
    (pa.field("video_chosen", pa.string()), False, False),
    (pa.field("video_rejected", pa.string()), False, False),
    (pa.field("caption", pa.string()), False, False),
    (pa.field("caption_rejected", pa.string()), False, False),
    (pa.field("segment_pref", pa.list_(pa.int8())), False, False),
    (pa.field("scores_chosen", pa.struct([])), False, False),
    (pa.field("scores_rejected", pa.struct([])), False, False),
]

_LISTS = [
    (pa.field("prompt_id", pa.string()), True, True),
    (pa.field("prompt", pa.string()), True, True),
    (pa.field("responses", pa.list_(pa.string())), True, True),
    (pa.field("response_ids", pa.list_(pa.string())), True, True),
    (pa.field("scores", pa.list_(pa.float64())), True, True),
    (pa.field("ranks", pa.list_(pa.int32())), True, True),
]

CONTRACTS: dict[str, list[tuple[pa.Field, bool, bool]]] = {
    "prompts": _PROMPTS, "responses": _RESPONSES, "pairs": _PAIRS, "lists": _LISTS,
}

_DEFAULTS = {("pairs", "weight"): 1.0, ("pairs", "stage"): 0}


def contract(kind: Kind) -> list[tuple[pa.Field, bool, bool]]:
    try:
        return CONTRACTS[kind]
    except KeyError:
        raise SchemaError(f"unknown table kind {kind!r}; expected one of {sorted(CONTRACTS)}") from None


def schema(kind: Kind, *, required_only: bool = False) -> pa.Schema:
    """The contract as a pyarrow schema (struct `scores*` columns shown as empty structs)."""
    return pa.schema([f for f, req, _ in contract(kind) if req or not required_only])


def _type_ok(actual: pa.DataType, expected: pa.DataType) -> bool:
    if pa.types.is_struct(expected) and expected.num_fields == 0:
        # free-form score struct: every field must be float64
        return pa.types.is_struct(actual) and all(
            pa.types.is_float64(actual.field(i).type) for i in range(actual.num_fields))
    if pa.types.is_string(expected):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual)
    if pa.types.is_list(expected):
        return (pa.types.is_list(actual) or pa.types.is_large_list(actual)) and _type_ok(
            actual.value_type, expected.value_type)
    if pa.types.is_struct(expected):
        return pa.types.is_struct(actual) and all(
            actual.get_field_index(expected.field(i).name) >= 0
            and _type_ok(actual.field(expected.field(i).name).type, expected.field(i).type)
            for i in range(expected.num_fields))
    return actual.equals(expected)


def _describe(t: pa.DataType) -> str:
    if pa.types.is_struct(t) and t.num_fields == 0:
        return "struct<...float64>"
    return str(t)


def _first_true(mask: pa.ChunkedArray | pa.Array) -> int | None:
    idx = pc.index(mask, True).as_py()
    return None if idx < 0 else idx


def validate(table: pa.Table, kind: Kind, *, source: str | None = None) -> pa.Table:
    """Check `table` against the contract. Raises SchemaError naming the column, the expected type and
    the first offending row (0-based). Returns the table unchanged on success."""
    names = set(table.column_names)
    for field, required, non_null in contract(kind):
        if field.name not in names:
            if required:
                raise SchemaError(
                    f"{kind} table is missing column {field.name!r} (expected {_describe(field.type)})",
                    column=field.name, expected=_describe(field.type), source=source)
            continue
        col = table.column(field.name)
        if not _type_ok(col.type, field.type):
            raise SchemaError(
                f"column {field.name!r} has type {col.type}, expected {_describe(field.type)}",
                column=field.name, expected=_describe(field.type), source=source)
        if non_null and col.null_count:
            raise SchemaError(f"column {field.name!r} must not be null ({_describe(field.type)})",
                              column=field.name, expected=_describe(field.type),
                              row=_first_true(pc.is_null(col)), source=source)
        if pa.types.is_floating(col.type) and len(col):
            bad = pc.fill_null(pc.invert(pc.is_finite(col)), False)
            if pc.any(bad).as_py():
                raise SchemaError(f"column {field.name!r} holds NaN or inf (expected finite float64)",
                                  column=field.name, expected="finite float64",
                                  row=_first_true(bad), source=source)
    if kind == "pairs" and len(table):
        neg = pc.fill_null(pc.less(table.column("margin"), 0.0), False)
        if pc.any(neg).as_py():
            raise SchemaError("column 'margin' must be >= 0 (score_chosen - score_rejected)",
                              column="margin", expected="float64 >= 0", row=_first_true(neg),
                              source=source)
    if kind == "lists" and len(table):
        lens = [pc.list_value_length(table.column(c)) for c in ("responses", "response_ids", "scores", "ranks")]
        for c, ln in zip(("response_ids", "scores", "ranks"), lens[1:], strict=True):
            bad = pc.not_equal(lens[0], ln)
            if pc.any(bad).as_py():
                raise SchemaError(f"column {c!r} list length differs from 'responses'",
                                  column=c, expected="same length as responses",
                                  row=_first_true(bad), source=source)
    return table


def conform(table: pa.Table, kind: Kind, *, source: str | None = None) -> pa.Table:
    """Cast contract columns to their exact types (large_string -> string etc.) and add defaulted
    columns (pairs: weight=1, stage=0). Missing required columns are not invented: validate() fails."""
    for field, _required, _ in contract(kind):
        name = field.name
        if name not in table.column_names:
            if (kind, name) in _DEFAULTS:
                table = table.append_column(field, pa.array([_DEFAULTS[(kind, name)]] * len(table), field.type))
            continue
        col = table.column(name)
        target = field.type
        if pa.types.is_struct(target) and target.num_fields == 0:
            continue  # free-form struct stays as is
        if not col.type.equals(target):
            try:
                col = col.cast(target)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise SchemaError(f"column {name!r} has type {col.type}, expected {_describe(target)}: {e}",
                                  column=name, expected=_describe(target), source=source) from None
            table = table.set_column(table.column_names.index(name), field.with_name(name), col)
    return table
