"""Catalog-specific user errors. All subclass PrefdataError so the CLI prints one line and exits 2.

The shared errors (DatasetNotFound, VersionNotFound, SchemaError, CommitConflict, ReadOnlyQuery) live in
prefdata.errors; these few only make sense for the catalog and are re-exported from `catalog`."""
from __future__ import annotations

from prefdata.errors import PrefdataError


class InvalidName(PrefdataError):
    """A dataset name, tag or `name@version` reference is malformed."""

    def __init__(self, value: object, why: str):
        super().__init__(f"invalid name {value!r}: {why}")
        self.value = value


class DatasetExists(PrefdataError):
    """`write(..., mode="create")` on a dataset that already has versions."""

    def __init__(self, name: str, latest: int):
        super().__init__(f"dataset {name!r} already exists (latest version {latest}); "
                         f"use mode='overwrite' or mode='append' to add a version")
        self.name, self.latest = name, latest


class TagExists(PrefdataError):
    def __init__(self, name: str, tag: str, version: int):
        super().__init__(f"dataset {name!r}: tag {tag!r} already points at version {version}; "
                         f"pass force=True to move it")
        self.name, self.tag, self.version = name, tag, version


class LineageError(PrefdataError):
    """The lineage passed to `write` is inconsistent (row accounting does not add up, a reserved key is
    set by the caller, a value is not JSON-serializable)."""

    def __init__(self, message: str, *, key: str | None = None):
        super().__init__(f"lineage{'.' + key if key else ''}: {message}")
        self.key = key


class QueryError(PrefdataError):
    """A read-only SQL query failed to parse, bind or run (syntax error, unknown column, ...)."""


class ExportError(PrefdataError):
    """An export cannot be written (unknown format, target exists, ...)."""
