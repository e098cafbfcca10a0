"""Fixtures for the catalog tests: a fresh on-disk catalog (helpers live in catalog_kit.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from catalog import Catalog


@pytest.fixture
def cat(tmp_path: Path) -> Catalog:
    return Catalog.open(tmp_path / "cat")
