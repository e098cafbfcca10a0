"""Shared fixtures for tests/ops: one real catalog holding the default build (arena sample -> rank ->
pairs -> curriculum), built once per session (about 2 s)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def built_catalog(tmp_path_factory):
    from catalog import Catalog
    from prefdata.build import run_recipe

    cat = Catalog.open(tmp_path_factory.mktemp("ops-catalog"))
    result = run_recipe(None, cat, progress=False)
    return cat, result
