"""Read-only SQL over catalog datasets with DuckDB.

Three independent guards, so a gap in one is covered by the others:
  1. the statement: DuckDB's own parser (`extract_statements`) must see exactly one SELECT; COPY, ATTACH,
     PRAGMA, SET, INSTALL/LOAD, EXPORT, CALL, DDL and DML are refused with ReadOnlyQuery
  2. the plan: the parsed query (json_serialize_sql) may only call the table functions in
     ALLOWED_TABLE_FUNCTIONS; read_csv, read_parquet, glob, read_text, query, ... are refused
  3. the connection: a fresh in-memory DuckDB with external access disabled (no file or network I/O),
     no extension auto-install/-load, no Python variable scanning, and a locked configuration
Only the datasets the query names are registered, each as a Lance dataset (DuckDB's Arrow dataset scan
pushes projections and filters down, so an aggregate over 1M rows never materializes them in Python)."""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from catalog.errors import InvalidName, QueryError
from catalog.names import parse_ref
from prefdata.errors import DatasetNotFound, ReadOnlyQuery

if TYPE_CHECKING:
    import duckdb

    from catalog.core import Catalog

ALLOWED_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest"})
# `FROM 'file.csv'` is DuckDB's replacement scan of a file; a name like that which is not a dataset is refused
_FILE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".json", ".jsonl", ".ndjson", ".arrow", ".feather", ".ipc",
                  ".db", ".duckdb", ".sqlite", ".xlsx", ".gz", ".zst", ".bz2", ".lance")

_CONFIG = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "python_enable_replacements": False,
    "lock_configuration": True,
}


def connect() -> duckdb.DuckDBPyConnection:
    import duckdb

    return duckdb.connect(":memory:", config=dict(_CONFIG))


def _walk(node: Any) -> Iterator[dict]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def check_read_only(con: duckdb.DuckDBPyConnection, query: str) -> tuple[set[str], set[str]]:
    """Refuse anything but one plain SELECT; return (base table names, CTE names) the query references."""
    import duckdb

    if not isinstance(query, str) or not query.strip():
        raise QueryError("empty query")
    try:
        statements = con.extract_statements(query)
    except duckdb.Error as e:
        raise QueryError(_first_line(e)) from None
    if len(statements) != 1:
        raise ReadOnlyQuery(f"expected exactly one statement, got {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise ReadOnlyQuery(f"only SELECT queries are allowed; refused statement type {kind.name}")
    ast = json.loads(con.execute("SELECT json_serialize_sql(?)", [query]).fetchall()[0][0])
    if ast.get("error"):
        raise ReadOnlyQuery(f"only plain SELECT queries are allowed ({ast.get('error_message', 'not a SELECT')})")
    tables: set[str] = set()
    ctes: set[str] = set()
    for node in _walk(ast["statements"]):
        kind = node.get("type")
        if kind == "TABLE_FUNCTION":
            fn = node["function"].get("function_name", "").lower()
            if fn not in ALLOWED_TABLE_FUNCTIONS:
                raise ReadOnlyQuery(f"table function {fn}() is not allowed (allowed: "
                                    f"{', '.join(sorted(ALLOWED_TABLE_FUNCTIONS))})")
        elif kind == "BASE_TABLE":
            if node.get("catalog_name") or node.get("schema_name"):
                continue  # system views such as information_schema.tables
            tables.add(node["table_name"])
        cte_map = node.get("cte_map")
        if isinstance(cte_map, dict):
            ctes.update(entry["key"] for entry in cte_map.get("map", []))
    return tables, ctes


def _resolve(cat: Catalog, ref: str) -> tuple[str, int | str | None] | None:
    """A table name -> (dataset, version) if it names a catalog dataset; None if it might be something else."""
    try:
        name, version = parse_ref(ref)
    except InvalidName:
        if "@" in ref:
            raise
        return None
    if cat.exists(name):
        return name, version
    # SQL identifiers are case-insensitive: accept a unique case-insensitive match
    matches = [n for n in cat.names() if n.lower() == name.lower()]
    if len(matches) == 1:
        return matches[0], version
    if version is not None:
        raise DatasetNotFound(name, str(cat.root))
    return None


def _resolve_quietly(cat: Catalog, ref: str) -> bool:
    try:
        return _resolve(cat, ref) is not None
    except (InvalidName, DatasetNotFound):
        return False


def run_sql(cat: Catalog, query: str) -> pa.Table:
    import duckdb

    con = connect()
    try:
        tables, ctes = check_read_only(con, query)
        for ref in sorted(tables - ctes):
            target = _resolve(cat, ref)
            if target is not None:
                con.register(ref, cat.dataset(*target))
            elif "/" in ref or "\\" in ref or ref.lower().endswith(_FILE_SUFFIXES):
                raise ReadOnlyQuery(f"{ref!r} looks like a file path; queries may only read catalog datasets")
        try:
            return con.sql(query).to_arrow_table()
        except duckdb.CatalogException as e:
            missing = _missing_table(e)
            if missing is not None and _resolve_quietly(cat, missing):
                raise QueryError(f"write dataset names that contain '.', '-' or '@' as quoted identifiers: "
                                 f'FROM "{missing}"') from None
            if missing is not None:
                raise DatasetNotFound(missing, str(cat.root)) from None
            raise QueryError(_first_line(e)) from None
        except duckdb.PermissionException as e:
            raise ReadOnlyQuery(_first_line(e)) from None
        except duckdb.Error as e:
            raise QueryError(_first_line(e)) from None
    finally:
        con.close()


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _missing_table(e: Exception) -> str | None:
    msg = _first_line(e)
    marker = "Table with name "
    if marker in msg and "does not exist" in msg:
        return msg.split(marker, 1)[1].split(" does not exist", 1)[0].strip('"')
    return None
