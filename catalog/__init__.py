"""Versioned dataset catalog on Lance: versions, tags, lineage, DuckDB SQL, polars scans, export.

    from catalog import Catalog, parse_ref
    cat = Catalog.open("prefdata_catalog")
    v = cat.write("pairs_hh", table, message="...", lineage={...})
    cat.read("pairs_hh", v); cat.sql('SELECT count(*) FROM "pairs_hh@1"')

Only pyarrow and lance are imported here; polars, duckdb and datasets load on first use, so the trainer
(which reads catalog versions) does not pull them in."""
from catalog.core import Catalog
from catalog.errors import DatasetExists, ExportError, InvalidName, LineageError, QueryError, TagExists
from catalog.hashing import canonical_json, content_hash
from catalog.names import format_ref, parse_ref, validate_name, validate_tag

__all__ = [
    "Catalog", "DatasetExists", "ExportError", "InvalidName", "LineageError", "QueryError", "TagExists",
    "canonical_json", "content_hash", "format_ref", "parse_ref", "validate_name", "validate_tag",
]
