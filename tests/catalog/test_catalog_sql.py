"""Read-only DuckDB SQL over catalog datasets: names, versions, tags, and every refusal."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from catalog_kit import pairs_table

from catalog import Catalog, InvalidName, QueryError
from prefdata.errors import DatasetNotFound, ReadOnlyQuery, VersionNotFound


@pytest.fixture
def sqlcat(cat: Catalog) -> Catalog:
    cat.write("pairs_hh", pairs_table(30))
    cat.write("pairs_hh", pairs_table(12))
    cat.write("arena-curry", pairs_table(9, tag="a"))
    cat.tag("pairs_hh", 1, "best")
    return cat


def test_sql_by_name_version_and_tag(sqlcat: Catalog):
    out = sqlcat.sql("SELECT stage, count(*) AS n, avg(margin) AS m FROM pairs_hh GROUP BY 1 ORDER BY 1")
    assert isinstance(out, pa.Table)
    assert out.column("n").to_pylist() == [4, 4, 4]
    t = pairs_table(12)
    expected = [sum(m for m, s in zip(t["margin"].to_pylist(), t["stage"].to_pylist(), strict=True) if s == k) / 4
                for k in range(3)]
    assert out.column("m").to_pylist() == pytest.approx(expected)
    assert sqlcat.sql('SELECT count(*) AS n FROM "pairs_hh@1"').column("n").to_pylist() == [30]
    assert sqlcat.sql('SELECT count(*) AS n FROM "pairs_hh@best"').column("n").to_pylist() == [30]
    assert sqlcat.sql('SELECT count(*) AS n FROM "arena-curry"').column("n").to_pylist() == [9]
    # two versions of one dataset side by side, a CTE, and a join across datasets
    out = sqlcat.sql('WITH old AS (SELECT i FROM "pairs_hh@1") '
                     'SELECT (SELECT count(*) FROM old) AS a, (SELECT count(*) FROM "pairs_hh@2") AS b, '
                     '(SELECT count(*) FROM pairs_hh p JOIN "arena-curry" c USING (i)) AS j')
    assert out.to_pylist() == [{"a": 30, "b": 12, "j": 9}]
    assert sqlcat.sql("SELECT count(*) AS n FROM PAIRS_HH").column("n").to_pylist() == [12]   # case-insensitive
    assert sqlcat.sql("SELECT sum(x) AS s FROM range(4) t(x)").column("s").to_pylist() == [6]


def test_sql_unknown_names_and_versions_are_typed(sqlcat: Catalog):
    secret_tbl = pa.table({"x": [1]})  # noqa: F841  a Python variable must never be visible to the query
    with pytest.raises(DatasetNotFound):
        sqlcat.sql("SELECT * FROM secret_tbl")
    with pytest.raises(DatasetNotFound):
        sqlcat.sql('SELECT * FROM "nope@2"')
    with pytest.raises(VersionNotFound):
        sqlcat.sql('SELECT * FROM "pairs_hh@7"')
    with pytest.raises(VersionNotFound):
        sqlcat.sql('SELECT * FROM "pairs_hh@nosuchtag"')
    with pytest.raises(InvalidName):
        sqlcat.sql('SELECT * FROM "pairs_hh@a@b"')
    with pytest.raises(QueryError):
        sqlcat.sql("SELEC 1")
    with pytest.raises(QueryError):
        sqlcat.sql("SELECT no_such_column FROM pairs_hh")
    with pytest.raises(QueryError):
        sqlcat.sql("   ")


REFUSED = [
    "CREATE TABLE t AS SELECT * FROM pairs_hh",
    "CREATE VIEW v AS SELECT 1",
    "DROP TABLE pairs_hh",
    "ALTER TABLE pairs_hh ADD COLUMN z INT",
    "INSERT INTO pairs_hh SELECT * FROM pairs_hh",
    "UPDATE pairs_hh SET margin = 0",
    "DELETE FROM pairs_hh",
    "COPY (SELECT * FROM pairs_hh) TO 'out.csv'",
    "COPY pairs_hh FROM 'in.csv'",
    "ATTACH 'other.duckdb' AS o",
    "DETACH o",
    "INSTALL httpfs",
    "LOAD httpfs",
    "PRAGMA version",
    "SET enable_external_access = true",
    "RESET threads",
    "EXPORT DATABASE 'dump'",
    "CALL pragma_version()",
    "SELECT 1; DROP TABLE pairs_hh",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_csv_auto('/etc/passwd')",
    "SELECT * FROM read_parquet('x.parquet')",
    "SELECT * FROM read_json('x.json')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM read_blob('/etc/hostname')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM query('SELECT 1')",
    "SELECT * FROM pairs_hh WHERE i IN (SELECT * FROM glob('*'))",
    "WITH x AS (SELECT * FROM read_csv('/etc/passwd')) SELECT * FROM x",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM 'data.parquet'",
    "PIVOT pairs_hh ON stage USING count(*)",
    "VACUUM",
    "CHECKPOINT",
    "BEGIN TRANSACTION",
]


@pytest.mark.parametrize("query", REFUSED)
def test_sql_refuses_anything_not_read_only(sqlcat: Catalog, query: str, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.parquet").write_bytes(b"")
    with pytest.raises(ReadOnlyQuery):
        sqlcat.sql(query)
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "other.duckdb").exists()
    assert not (tmp_path / "dump").exists()
    assert sqlcat.read("pairs_hh").num_rows == 12 and [v["version"] for v in sqlcat.versions("pairs_hh")] == [1, 2]


def test_the_connection_itself_cannot_touch_files_or_unlock(tmp_path: Path):
    """Third guard, tested on its own: even a statement that slipped past the parser checks could not
    read or write files, load extensions or re-enable access on the connection the catalog uses."""
    import duckdb

    from catalog.sql import connect

    con = connect()
    (tmp_path / "x.csv").write_text("a\n1\n")
    with pytest.raises(duckdb.PermissionException):
        con.sql(f"SELECT * FROM read_csv('{tmp_path / 'x.csv'}')").fetchall()
    with pytest.raises(duckdb.PermissionException):
        con.sql(f"COPY (SELECT 1) TO '{tmp_path / 'y.csv'}'")
    with pytest.raises(duckdb.Error, match="locked"):
        con.sql("SET enable_external_access = true")
    with pytest.raises(duckdb.Error):
        con.sql("LOAD httpfs")
    assert not (tmp_path / "y.csv").exists()


def test_dotted_names_need_quotes_and_say_so(cat: Catalog):
    cat.write("uf.v2", pairs_table(3))
    assert cat.sql('SELECT count(*) AS n FROM "uf.v2"').column("n").to_pylist() == [3]
    with pytest.raises(QueryError, match='FROM "uf.v2"'):
        cat.sql("SELECT count(*) FROM uf.v2")
