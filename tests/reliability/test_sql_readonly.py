"""`sql` refuses every statement that could write or reach outside the catalog, through the real CLI and
the library, and nothing on disk changes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from catalog import Catalog
from prefdata.errors import PrefdataError, ReadOnlyQuery

ROOT = Path(__file__).resolve().parents[2]


def _refused(tmp: Path) -> list[str]:
    out = tmp / "leak"
    return [
        'CREATE TABLE t AS SELECT * FROM "p"',                       # DDL
        "CREATE VIEW v AS SELECT 1",
        'DROP TABLE "p"',
        'ALTER TABLE "p" ADD COLUMN x INT',
        'INSERT INTO "p" VALUES (\'x\', 1.0)',                        # DML
        'UPDATE "p" SET score = 0',
        'DELETE FROM "p"',
        f"COPY (SELECT * FROM \"p\") TO '{out}.csv'",                 # COPY / file writing
        f"COPY \"p\" FROM '{out}.csv'",
        f"EXPORT DATABASE '{out}_db'",
        f"ATTACH '{out}.duckdb' AS x",                               # ATTACH
        "INSTALL httpfs", "LOAD httpfs",                             # extensions
        "PRAGMA enable_profiling", "SET threads = 1",                # configuration
        "CALL pragma_version()",
        "SELECT * FROM read_csv('/etc/passwd')",                     # file-reading functions
        "SELECT * FROM read_text('/etc/hostname')",
        f"SELECT * FROM read_parquet('{out}*.parquet')",
        "SELECT * FROM glob('/*')",
        "SELECT * FROM '/etc/passwd'",
        'SELECT 1; DROP TABLE "p"',                                   # a write hidden after a read
        f"SELECT * FROM query('COPY (SELECT 1) TO ''{out}.txt''')",
    ]


def test_sql_refuses_writes(tmp_path):
    cat = Catalog.open(tmp_path / "cat")
    cat.write("p", pa.table({"prompt_id": ["a", "b"], "score": [1.0, 2.0]}), message="seed")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    for q in _refused(tmp_path):
        with pytest.raises(ReadOnlyQuery):
            cat.sql(q)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before       # nothing written anywhere
    assert cat.read("p").num_rows == 2 and len(cat.versions("p")) == 1
    assert cat.sql('SELECT sum(score) AS s FROM "p"').column("s").to_pylist() == [3.0]


def test_cli_sql_refusal_is_a_one_line_user_error(tmp_path):
    cat = Catalog.open(tmp_path / "cat")
    cat.write("p", pa.table({"prompt_id": ["a"], "score": [1.0]}), message="seed")
    r = subprocess.run([sys.executable, "-m", "prefdata", "sql", 'DELETE FROM "p"', "--catalog",
                        str(tmp_path / "cat")], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len((r.stderr + r.stdout).strip().splitlines()) == 1
    assert isinstance(ReadOnlyQuery("x"), PrefdataError)
