"""ingest_to_catalog: read a source and write it as one new catalog version with its lineage."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from prefdata.ingest.problems import OnError
from prefdata.ingest.source import read_source


def source_sha256(path: Path) -> str:
    """sha256 of a file's bytes; for a folder, of each file's relative path and bytes in sorted order."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _media_root(cat: Any) -> Path | None:
    for attr in ("root", "path"):
        root = getattr(cat, attr, None)
        if root is not None:
            return Path(root)
    return None


def ingest_to_catalog(cat: Any, path: str | Path, format: str | None = None, *, name: str | None = None,
                      mapping: dict[str, str] | None = None, on_error: OnError = "raise",
                      message: str | None = None, media_dir: str | Path | None = None,
                      carry: list[str] | None = None) -> dict[str, Any]:
    """Ingest `path` into catalog `cat` as dataset `name` (default: the file's stem). Media bytes go under
    `media_dir` (default: the catalog directory); `carry` keeps the named source columns (see read_source).
    Returns name, version, format, kind, rows_in, rows_kept,
    drops, source, source_sha256 and the format's info."""
    path = Path(path)
    res = read_source(path, format=format, mapping=mapping, on_error=on_error,
                      media_dir=media_dir if media_dir is not None else _media_root(cat), carry=carry)
    name = name or path.stem
    lineage = {
        "builder": "ingest", "format": res.format, "source": str(path), "source_sha256": source_sha256(path),
        "config": {"format": res.format, "mapping": mapping or None, "on_error": on_error,
                   **({"carry": list(carry)} if carry else {})},
        # rows_dropped is the catalog's accounting key (checked: rows_in == rows_kept + sum); drops mirrors it
        # under the name the ingest API reports
        "rows_in": res.rows_in, "rows_kept": res.rows_kept, "rows_dropped": res.drops, "drops": res.drops,
        "kind": res.kind,
    }
    msg = message or f"ingest {path.name} ({res.format})"
    version = cat.write(name, res.table, message=msg, lineage=lineage)
    return {"name": name, "version": version, "format": res.format, "kind": res.kind, "rows_in": res.rows_in,
            "rows_kept": res.rows_kept, "drops": res.drops, "source": str(path),
            "source_sha256": lineage["source_sha256"], "info": res.info}
