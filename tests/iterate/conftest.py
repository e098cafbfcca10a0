"""Fixtures for the iterate tests: one tiny random Llama per session and one uninterrupted two-round run (in
process, one torch thread, like the subprocess runs it is compared with)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from iterate_kit import make_model, recipe


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("iter_model") / "tiny")


@dataclass
class Run:
    dir: Path
    recipe: Path
    catalog: Path
    summary: dict


@pytest.fixture(scope="session")
def two_rounds(tmp_path_factory, tiny_policy) -> Run:
    import torch

    from catalog import Catalog
    from prefdata.iterate import iterate

    tmp = tmp_path_factory.mktemp("iter_ref")
    path = recipe(tmp, tiny_policy)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = iterate(path, catalog=Catalog.open(tmp / "cat"), progress=False)
    finally:
        torch.set_num_threads(before)
    return Run(tmp, path, tmp / "cat", summary)
