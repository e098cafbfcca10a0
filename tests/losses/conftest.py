"""Fixtures of tests/losses; helpers live in losses_testkit.py."""
from __future__ import annotations

import json

import pytest
from losses_testkit import SPEC_JSON, make_pair


@pytest.fixture
def pair():
    return make_pair


@pytest.fixture(scope="session")
def spec_cases() -> list[dict]:
    return json.loads(SPEC_JSON.read_text())
