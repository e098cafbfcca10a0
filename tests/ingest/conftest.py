"""Fixtures for the ingest tests (helpers live in ingest_kit.py)."""
from pathlib import Path

import pytest
from ingest_kit import write_jsonl


@pytest.fixture
def jsonl(tmp_path):
    """jsonl(rows, name) -> path of a JSON Lines file in tmp_path (see ingest_kit.write_jsonl)."""
    def make(rows: list, name: str = "in.jsonl") -> Path:
        return write_jsonl(tmp_path / name, rows)
    return make
