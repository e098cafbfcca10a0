"""Lineage records: what made a version.

A record is stored inside the Lance commit that creates the version (the transaction's properties),
so it becomes visible atomically with the data: a version without its lineage, or lineage without its
version, cannot exist after a crash. Keys always present (None / empty when the caller had nothing to say):

  builder, recipe, config, config_sha256, inputs, rows_in, rows_kept, rows_dropped,
  package_version, content_hash, created_at, message, mode, base_version, rows, rows_written

plus any extra keys the caller passes (scorer agreement report, reference model, ...). `name`, `version`
and `ref` are added when a record is read back (the version number is Lance's, known only after commit)."""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

import prefdata
from catalog.errors import LineageError
from catalog.hashing import canonical_json, sha256_text

PROP_LINEAGE = "prefdata.lineage"
PROP_BLOCKS = "prefdata.blocks"
PROP_MESSAGE = "lance.commit.message"  # Lance's own key, so `lance` tools show the message too

# Set by the catalog, never by the caller.
COMPUTED = ("package_version", "content_hash", "created_at", "message", "mode", "base_version", "rows",
            "rows_written", "name", "version", "ref")
CALLER_DEFAULTS: dict[str, Any] = {"builder": None, "recipe": None, "config": None, "config_sha256": None,
                                   "inputs": [], "rows_in": None, "rows_kept": None, "rows_dropped": {}}


def _count(value: object, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise LineageError(f"expected a non-negative integer, got {value!r}", key=key)
    return value


def _config(value: object) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise LineageError(f"a string config must be JSON ({e.msg} at char {e.pos})", key="config") from None
    dump = getattr(value, "model_dump", None)
    return dump(mode="json") if callable(dump) else value


def prepare(user: Mapping[str, Any] | None, *, resolve_input: Callable[[str], str]) -> dict[str, Any]:
    """Validate and normalize the caller's lineage (everything that does not depend on the commit)."""
    if user is not None and not isinstance(user, Mapping):
        raise LineageError(f"expected a mapping, got {type(user).__name__}")
    rec: dict[str, Any] = dict(CALLER_DEFAULTS)
    for key, value in (user or {}).items():
        if not isinstance(key, str):
            raise LineageError(f"keys must be strings, got {key!r}")
        if key in COMPUTED:
            raise LineageError("is recorded by the catalog and cannot be passed in", key=key)
        rec[key] = value

    if rec["config"] is not None:
        rec["config"] = _config(rec["config"])
        try:
            digest = sha256_text(canonical_json(rec["config"]))
        except (TypeError, ValueError) as e:
            raise LineageError(f"not JSON-serializable: {e}", key="config") from None
        if rec["config_sha256"] not in (None, digest):
            raise LineageError(f"{rec['config_sha256']} does not match the config's canonical JSON "
                               f"(sha256 {digest})", key="config_sha256")
        rec["config_sha256"] = digest

    inputs = rec["inputs"]
    if isinstance(inputs, str) or not isinstance(inputs, list | tuple):
        raise LineageError("expected a list of 'name@version' strings", key="inputs")
    for i, ref in enumerate(inputs):
        if not isinstance(ref, str) or not ref:
            raise LineageError(f"expected a non-empty string, got {ref!r}", key=f"inputs[{i}]")
    rec["inputs"] = [resolve_input(ref) for ref in inputs]

    rec["rows_in"] = _count(rec["rows_in"], "rows_in")
    rec["rows_kept"] = _count(rec["rows_kept"], "rows_kept")
    dropped = rec["rows_dropped"] or {}
    if not isinstance(dropped, Mapping):
        raise LineageError("expected a mapping reason -> row count", key="rows_dropped")
    rec["rows_dropped"] = {str(k): _count(v, f"rows_dropped.{k}") for k, v in dropped.items()}
    if rec["rows_in"] is not None and rec["rows_kept"] is not None:
        total = rec["rows_kept"] + sum(rec["rows_dropped"].values())
        if total != rec["rows_in"]:
            raise LineageError(f"rows_in {rec['rows_in']} != rows_kept {rec['rows_kept']} + dropped "
                               f"{sum(rec['rows_dropped'].values())} {rec['rows_dropped']}", key="rows_in")
    try:
        canonical_json(rec)
    except (TypeError, ValueError) as e:
        raise LineageError(f"not JSON-serializable: {e}") from None
    return rec


def finish(rec: dict[str, Any], *, message: str, mode: str, base_version: int, rows: int, rows_written: int,
           content_hash: str) -> dict[str, Any]:
    return {**rec, "package_version": prefdata.__version__, "content_hash": content_hash,
            "created_at": datetime.now(timezone.utc).isoformat(), "message": message, "mode": mode,
            "base_version": base_version, "rows": rows, "rows_written": rows_written}


def to_properties(rec: dict[str, Any], block_hex: list[str]) -> dict[str, str]:
    return {PROP_LINEAGE: canonical_json(rec), PROP_BLOCKS: json.dumps(block_hex),
            PROP_MESSAGE: rec["message"]}


def from_properties(props: Mapping[str, str] | None) -> dict[str, Any] | None:
    if not props or PROP_LINEAGE not in props:
        return None
    return json.loads(props[PROP_LINEAGE])


def blocks_from_properties(props: Mapping[str, str] | None) -> list[bytes] | None:
    if not props or PROP_BLOCKS not in props:
        return None
    return [bytes.fromhex(h) for h in json.loads(props[PROP_BLOCKS])]
