"""The catalog: a directory of Lance datasets, one per name, each write a new immutable version.

Layout:
  <root>/catalog.json          marker (format version)
  <root>/<name>.lance/         the dataset (Lance manages _versions/, data/, _transactions/, _refs/tags/)
  <root>/_events/<name>.lance  append-only events about versions (training runs, reports, ...)
  <root>/_locks/<name>.lock    writer lock (flock), see locking.py

Lineage lives inside each version's Lance commit (see lineage.py); tags are Lance tags. Nothing here
caches dataset state across calls, so several processes can share one catalog."""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lance
import pyarrow as pa
from lance import LanceDataset

from catalog import lineage as lineage_mod
from catalog.errors import InvalidName, TagExists
from catalog.locking import writer_lock
from catalog.names import format_ref, parse_ref, validate_name, validate_tag
from prefdata.errors import DatasetNotFound, PrefdataError, SchemaError, VersionNotFound

if TYPE_CHECKING:
    import polars as pl

DEFAULT_PATH = "./prefdata_catalog"
ENV_VAR = "PREFDATA_CATALOG"
MARKER = "catalog.json"
MAX_UPSTREAM_DEPTH = 64


class Catalog:
    def __init__(self, root: Path):
        self.root = root

    # ------------------------------------------------------------------------------------- opening
    @classmethod
    def open(cls, path: str | os.PathLike | None = None) -> Catalog:
        """Open (creating if missing) the catalog at `path`, else $PREFDATA_CATALOG, else ./prefdata_catalog."""
        root = Path(path if path is not None else os.environ.get(ENV_VAR) or DEFAULT_PATH).expanduser()
        if root.exists() and not root.is_dir():
            raise PrefdataError(f"catalog path {root} exists and is not a directory")
        root.mkdir(parents=True, exist_ok=True)
        marker = root / MARKER
        if not marker.exists():
            tmp = root / f".{MARKER}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps({"format": "prefdata-catalog", "version": 1}) + "\n")
            os.replace(tmp, marker)  # atomic: concurrent openers all end with the same marker
        return cls(root.resolve())

    def __repr__(self) -> str:
        return f"Catalog({str(self.root)!r})"

    # ------------------------------------------------------------------------------ names & versions
    def uri(self, name: str) -> str:
        return str(self.root / f"{validate_name(name)}.lance")

    def names(self) -> list[str]:
        return sorted(p.name[: -len(".lance")] for p in self.root.glob("*.lance") if _has_manifest(p))

    def exists(self, name: str) -> bool:
        return _has_manifest(Path(self.uri(name)))

    def open_latest(self, name: str) -> LanceDataset | None:
        """The latest version, or None if the dataset has no committed version yet."""
        if not self.exists(name):
            return None
        return lance.dataset(self.uri(name))

    def dataset(self, name: str, version: int | str | None = None) -> LanceDataset:
        """The Lance dataset checked out at `version` (int, tag, or None for latest); `name` may be 'name@v'."""
        name, version = _split(name, version)
        latest = self.open_latest(name)
        if latest is None:
            raise DatasetNotFound(name, str(self.root))
        if version is None:
            return latest
        if isinstance(version, bool) or not isinstance(version, int | str):
            raise InvalidName(version, "a version is an int or a tag name")
        if isinstance(version, str) and version.isdigit():
            version = int(version)
        if isinstance(version, int):
            if not 1 <= version <= latest.version:
                raise VersionNotFound(name, version, self._version_numbers(latest))
            try:
                return latest.checkout_version(version)
            except (ValueError, OSError):
                raise VersionNotFound(name, version, self._version_numbers(latest)) from None
        tags = self._tags(latest)
        if version not in tags:
            raise VersionNotFound(name, version, self._version_numbers(latest))
        return latest.checkout_version(tags[version])

    def resolve(self, name: str, version: int | str | None = None) -> int:
        return self.dataset(name, version).version

    def pin_input(self, ref: str) -> str:
        """Lineage input -> 'name@<int>' when it names a dataset of this catalog; anything else (a file
        path, a URL, a hub id) is an external input kept verbatim."""
        try:
            name, version = parse_ref(ref)
        except InvalidName:
            return ref
        if not self.exists(name):
            return ref
        return format_ref(name, self.resolve(name, version))

    @staticmethod
    def _version_numbers(ds: LanceDataset) -> list[int]:
        return [v["version"] for v in ds.versions()]

    @staticmethod
    def _tags(ds: LanceDataset) -> dict[str, int]:
        return {tag: info["version"] for tag, info in ds.tags.list().items()}

    # -------------------------------------------------------------------------------------- reading
    def read(self, name: str, version: int | str | None = None, *, columns: list[str] | None = None) -> pa.Table:
        ds = self.dataset(name, version)
        if columns is not None:
            unknown = [c for c in columns if c not in ds.schema.names]
            if unknown:
                raise SchemaError(f"{name}@{ds.version} has no column {unknown[0]!r}", column=unknown[0])
        return ds.to_table(columns=columns)

    def scan(self, name: str, version: int | str | None = None) -> pl.LazyFrame:
        """A lazy polars frame over one version; projections and filters are pushed into Lance's scanner."""
        import polars as pl

        return pl.scan_pyarrow_dataset(self.dataset(name, version))

    # -------------------------------------------------------------------------------------- writing
    def writer_lock(self, name: str, timeout_s: float) -> AbstractContextManager[None]:
        return writer_lock(self.root / "_locks", name, timeout_s)

    def write(self, name: str, table: pa.Table | Any, *, message: str = "", lineage: Mapping[str, Any] | None = None,
              mode: str = "overwrite", lock_timeout_s: float = 120.0, max_retries: int = 10) -> int:
        """Commit `table` as a new version of `name` and return its version number.

        mode: "overwrite" (default; creates the dataset if missing, replaces the content, older versions stay
        readable), "append" (adds rows; the schema must match; existing data files are not rewritten) or
        "create" (fails with DatasetExists if the dataset has versions)."""
        from catalog.writer import MODES, write_version

        validate_name(name)
        if mode not in MODES:
            raise PrefdataError(f"write mode {mode!r} is not one of {', '.join(MODES)}")
        if not isinstance(message, str):
            raise PrefdataError(f"message must be a string, got {type(message).__name__}")
        table = _as_table(table)
        return write_version(self, name, table, message=message, user_lineage=lineage, mode=mode,
                             lock_timeout_s=lock_timeout_s, max_retries=max_retries)

    def stage(self, name: str, table: pa.Table | Any, *, message: str = "", lineage: Mapping[str, Any] | None = None,
              lock_timeout_s: float = 120.0, max_retries: int = 10):
        """Write and hash `table` as the next version of `name` (replacing its content, as mode "overwrite")
        without committing it: returns a catalog.writer.Staged whose `commit()` makes it a version (with the
        same content hash and lineage as `write`) and whose `discard()` deletes its files. Until then nothing
        is visible. For work that may still fail after the data is known (a build stores its source only once
        its steps have succeeded, and writes it while they run)."""
        from catalog.writer import Staged

        validate_name(name)
        if not isinstance(message, str):
            raise PrefdataError(f"message must be a string, got {type(message).__name__}")
        return Staged(self, name, _as_table(table), message=message, user_lineage=lineage,
                      lock_timeout_s=lock_timeout_s, max_retries=max_retries)

    def write_batches(self, name: str, batches: Any, *, schema: pa.Schema | None = None, message: str = "",
                      lineage: Mapping[str, Any] | None = None, mode: str = "overwrite",
                      lock_timeout_s: float = 120.0, max_retries: int = 10,
                      skip_if_hash: str | None = None) -> int | None:
        """Commit a stream of record batches (a RecordBatchReader, or an iterable of batches with `schema`)
        as ONE new version, with the same content hash and lineage as `write` of the same rows, without
        holding the table in memory. mode: "overwrite" or "create". With `skip_if_hash`, nothing is committed
        when the stream's content hash equals it, and None is returned."""
        from catalog.writer import write_stream

        validate_name(name)
        if not isinstance(message, str):
            raise PrefdataError(f"message must be a string, got {type(message).__name__}")
        if isinstance(batches, pa.RecordBatchReader):
            schema = schema or batches.schema
        elif schema is None:
            raise PrefdataError("write_batches needs schema= when given an iterable of record batches")
        return write_stream(self, name, batches, schema, message=message, user_lineage=lineage, mode=mode,
                            lock_timeout_s=lock_timeout_s, max_retries=max_retries, skip_if_hash=skip_if_hash)

    # ---------------------------------------------------------------------------------- tags
    def tag(self, name: str, version: int | str, tag: str, *, force: bool = False) -> int:
        """Point `tag` at a version (int or another tag); returns the version number. Moving an existing
        tag to another version needs force=True."""
        validate_tag(tag)
        target = self.dataset(name, version)
        latest = self.open_latest(name)
        current = self._tags(latest).get(tag)
        if current == target.version:
            return current
        if current is not None:
            if not force:
                raise TagExists(name, tag, current)
            latest.tags.update(tag, target.version)
        else:
            try:
                latest.tags.create(tag, target.version)
            except OSError:  # created by a concurrent caller between our check and create
                current = self._tags(self.open_latest(name)).get(tag)
                if current != target.version and not force:
                    raise TagExists(name, tag, current) from None
                latest.tags.update(tag, target.version)
        return target.version

    def untag(self, name: str, tag: str) -> None:
        validate_tag(tag)
        latest = self.dataset(name)
        if tag not in self._tags(latest):
            raise VersionNotFound(name, tag)
        latest.tags.delete(tag)

    def tags(self, name: str) -> dict[str, int]:
        return self._tags(self.dataset(name))

    # ---------------------------------------------------------------------------------- lineage
    def lineage(self, name: str, version: int | str | None = None) -> dict[str, Any]:
        ds = self.dataset(name, version)
        return self._lineage_of(name, ds, ds.version)

    def _lineage_of(self, name: str, ds: LanceDataset, version: int, meta: dict | None = None) -> dict[str, Any]:
        tx = ds.read_transaction(version)
        rec = lineage_mod.from_properties(tx.transaction_properties if tx is not None else None)
        if rec is None:
            # written with Lance directly, not through the catalog: say so instead of inventing lineage
            meta = meta or next((v for v in ds.versions() if v["version"] == version), {})
            rows = int(meta.get("metadata", {}).get("total_rows", -1))
            stamp = meta.get("timestamp")
            rec = {**lineage_mod.CALLER_DEFAULTS, "external": True, "created_at": stamp.isoformat() if stamp else None,
                   "message": (tx.transaction_properties or {}).get(lineage_mod.PROP_MESSAGE, "") if tx else "",
                   "rows": rows if rows >= 0 else None, "content_hash": None}
        return {"name": name, "version": version, "ref": f"{name}@{version}", **rec}

    def versions(self, name: str) -> list[dict[str, Any]]:
        """One dict per version, oldest first: version, created_at, rows, message, tags, content_hash, mode."""
        latest = self.dataset(name)
        by_version: dict[int, list[str]] = {}
        for tag, v in sorted(self._tags(latest).items()):
            by_version.setdefault(v, []).append(tag)
        out = []
        for meta in latest.versions():
            v = meta["version"]
            rec = self._lineage_of(name, latest, v, meta)
            out.append({"version": v, "created_at": rec["created_at"], "rows": rec["rows"],
                        "message": rec["message"], "tags": by_version.get(v, []),
                        "content_hash": rec["content_hash"], "mode": rec.get("mode"),
                        "builder": rec.get("builder"), "recipe": rec.get("recipe")})
        return out

    def log(self, name: str, *, upstream: bool = True) -> list[dict[str, Any]]:
        """Lineage records of every version and every event of `name`, newest first. Each version record
        carries `type: "version"`, its tags and, when `upstream`, the records of its catalog inputs
        (recursively) under `upstream`; events carry `type: "event"`."""
        from catalog.events import read_events

        latest = self.dataset(name)
        tags = self._tags(latest)
        records: list[dict[str, Any]] = []
        for meta in latest.versions():
            rec = self._lineage_of(name, latest, meta["version"], meta)
            rec["type"] = "version"
            rec["tags"] = sorted(t for t, v in tags.items() if v == meta["version"])
            if upstream:
                rec["upstream"] = self._upstream(rec["inputs"], seen={rec["ref"]}, depth=0)
            records.append(rec)
        records += read_events(self.root, name)
        # newest first; a version and an event with the same timestamp: the version sorts after the event
        records.sort(key=lambda r: (r.get("created_at") or "", r["type"] == "event", r.get("version") or 0),
                     reverse=True)
        return records

    def _upstream(self, inputs: list[str], *, seen: set[str], depth: int) -> list[dict[str, Any]]:
        out = []
        for ref in inputs:
            try:
                name, version = parse_ref(ref)
            except InvalidName:
                out.append({"ref": ref, "external": True})
                continue
            if not isinstance(version, int) or not self.exists(name):
                out.append({"ref": ref, "external": True})
                continue
            if ref in seen or depth >= MAX_UPSTREAM_DEPTH:
                out.append({"ref": ref, "cycle_or_depth_limit": True})
                continue
            try:
                rec = self.lineage(name, version)
            except VersionNotFound:
                out.append({"ref": ref, "missing": True})
                continue
            rec["upstream"] = self._upstream(rec["inputs"], seen=seen | {ref}, depth=depth + 1)
            out.append(rec)
        return out

    def verify(self, name: str, version: int | str | None = None) -> dict[str, Any]:
        """Recompute the content hash of a version from its data and compare with its lineage."""
        from catalog.hashing import content_hash

        ds = self.dataset(name, version)
        stored = self._lineage_of(name, ds, ds.version)["content_hash"]
        computed = content_hash(ds.to_batches(), schema=ds.schema)
        return {"ref": f"{name}@{ds.version}", "stored": stored, "computed": computed, "ok": stored == computed}

    # ---------------------------------------------------------------------------------- events
    def log_event(self, name: str, version: int | str | None, kind: str, record: Mapping[str, Any]) -> dict[str, Any]:
        """Append an event about `name@version` (e.g. a training run that used it); returns the stored event."""
        from catalog.events import append_event

        ds = self.dataset(name, version)
        return append_event(self.root, name, ds.version, kind, record)

    def events(self, name: str) -> list[dict[str, Any]]:
        from catalog.events import read_events

        self.dataset(name)
        return read_events(self.root, name)

    # ---------------------------------------------------------------------------------- SQL & export
    def sql(self, query: str) -> pa.Table:
        """Run one read-only SELECT; datasets are tables by name, '"name@3"' / '"name@tag"' pick a version."""
        from catalog.sql import run_sql

        return run_sql(self, query)

    def export(self, ref: str, to: str, out_dir: str | os.PathLike, *, shard_rows: int | None = None,
               overwrite: bool = False) -> dict[str, Any]:
        """Write one version as parquet (one file, or shards of `shard_rows`), jsonl, or an HF `datasets`
        directory (save_to_disk). Returns {"ref", "format", "paths", "rows", "lineage_path"}."""
        from catalog.export import export

        return export(self, ref, to, Path(out_dir), shard_rows=shard_rows, overwrite=overwrite)


# ---------------------------------------------------------------------------------------- helpers
def _has_manifest(path: Path) -> bool:
    versions = path / "_versions"
    if not versions.is_dir():
        return False
    return any(p.name.endswith(".manifest") for p in versions.iterdir())


def _split(name: str, version: int | str | None) -> tuple[str, int | str | None]:
    if isinstance(name, str) and "@" in name:
        base, ref_version = parse_ref(name)
        if version is not None and version != ref_version:
            raise InvalidName(name, f"the reference already names a version; got version={version!r} as well")
        return base, ref_version
    return validate_name(name), version


def _as_table(table: Any) -> pa.Table:
    if isinstance(table, pa.Table):
        return table
    if isinstance(table, pa.RecordBatch):
        return pa.Table.from_batches([table])
    if type(table).__module__.startswith("polars"):
        if type(table).__name__ == "LazyFrame":
            table = table.collect()
        return table.to_arrow()
    raise SchemaError(f"write expects a pyarrow.Table (or a polars DataFrame), got {type(table).__name__}")
