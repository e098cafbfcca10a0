"""Format auto-detection from the keys (and, for HH-RLHF, the transcript shape) of the first records.

A format is a candidate when it matches every peeked record. Where one candidate specialises another
(hh-rlhf is TRL's implicit-prompt format with "\\n\\nHuman:" transcripts) the specialisation wins. No
candidate, or several unrelated ones, is a FormatError that says what was seen and asks for --format."""
from __future__ import annotations

from pathlib import Path

from prefdata.errors import FormatError, IngestError
from prefdata.ingest.formats.base import Record
from prefdata.ingest.registry import FORMATS


def detect_format(records: list[Record] | str | Path, *, source: str = "input") -> str:
    """Format name for a file/folder path, or for already-read first records."""
    if isinstance(records, str | Path):
        from prefdata.ingest.readers import container_of, peek

        path = Path(records)
        if not path.exists():
            raise IngestError(str(path), "no such file or folder")
        source, records = str(path), peek(path, container_of(path))
    if not records:
        raise FormatError(f"{source}: no readable records to detect the format from; pass --format")
    candidates = [f for f in FORMATS.values() if f.matches is not None and all(f.matches(r) for r in records)]
    refined = {f.refines for f in candidates if f.refines}
    candidates = [f for f in candidates if f.name not in refined]
    keys = sorted(records[0])
    if not candidates:
        known = ", ".join(f.name for f in FORMATS.values() if f.matches is not None)
        raise FormatError(f"{source}: unknown format (first record has keys {keys}); known formats: {known} "
                          "(see docs/ingest.md), or --format jsonl|parquet|hf with --map canonical=source")
    if len(candidates) > 1:
        names = ", ".join(f.name for f in candidates)
        raise FormatError(f"{source}: ambiguous format, records match {names} (keys {keys}); "
                          f"pass --format one of: {names}")
    return candidates[0].name
