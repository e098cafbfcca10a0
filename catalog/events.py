"""Append-only events linked to a dataset version, e.g. "run X trained on name@v, checkpoint dir, config
hash". Stored as a small Lance dataset per catalog dataset (`<root>/_events/<name>.lance`): each event is
one appended version, Lance rebases concurrent appends, and a killed writer leaves no partial event."""
from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lance
import pyarrow as pa

from catalog.errors import LineageError
from catalog.hashing import canonical_json

SCHEMA = pa.schema([
    pa.field("event_id", pa.string()), pa.field("name", pa.string()), pa.field("version", pa.int64()),
    pa.field("kind", pa.string()), pa.field("created_at", pa.string()), pa.field("record", pa.string()),
])


def _uri(root: Path, name: str) -> Path:
    return root / "_events" / f"{name}.lance"


def append_event(root: Path, name: str, version: int, kind: str, record: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(kind, str) or not kind.strip():
        raise LineageError("an event kind must be a non-empty string, e.g. 'train'", key="kind")
    if not isinstance(record, Mapping):
        raise LineageError(f"an event record must be a mapping, got {type(record).__name__}", key="record")
    try:
        body = canonical_json(dict(record))
    except (TypeError, ValueError) as e:
        raise LineageError(f"not JSON-serializable: {e}", key="record") from None
    event = {"event_id": uuid.uuid4().hex, "name": name, "version": version, "kind": kind,
             "created_at": datetime.now(timezone.utc).isoformat(), "record": body}
    table = pa.Table.from_pylist([event], schema=SCHEMA)
    uri = _uri(root, name)
    uri.parent.mkdir(parents=True, exist_ok=True)
    props = {"lance.commit.message": f"event {kind} on {name}@{version}"}
    if (uri / "_versions").is_dir():
        lance.write_dataset(table, uri, mode="append", transaction_properties=props)
    else:
        try:
            lance.write_dataset(table, uri, mode="create", transaction_properties=props)
        except (OSError, ValueError):
            # another process created it between our check and our create: append instead
            lance.write_dataset(table, uri, mode="append", transaction_properties=props)
    return _to_record(event)


def _to_record(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "event", "event_id": row["event_id"], "name": row["name"], "version": row["version"],
            "ref": f"{row['name']}@{row['version']}", "kind": row["kind"], "created_at": row["created_at"],
            "record": json.loads(row["record"])}


def read_events(root: Path, name: str) -> list[dict[str, Any]]:
    uri = _uri(root, name)
    if not (uri / "_versions").is_dir():
        return []
    rows = lance.dataset(uri).to_table().to_pylist()
    return [_to_record(r) for r in rows]
