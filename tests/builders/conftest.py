"""Shared helpers for the builder tests: tiny hand-checkable response tables and the accounting check."""
from __future__ import annotations

import polars as pl
import pytest

from builders.base import Built, StepContext
from prefdata.schema import conform, validate


def responses(scores: dict[str, list], **extra_cols) -> pl.DataFrame:
    """{prompt_id: [score, ...]} -> a responses table; response_id = '<prompt>:<index in prompt>'."""
    rows = []
    for pid, ss in scores.items():
        for i, s in enumerate(ss):
            rows.append({"prompt_id": pid, "prompt": f"prompt {pid}", "response_id": f"{pid}:{i}",
                         "response": f"answer {i} to {pid}", "score": None if s is None else float(s)})
    df = pl.DataFrame(rows, schema={"prompt_id": pl.String, "prompt": pl.String, "response_id": pl.String,
                                    "response": pl.String, "score": pl.Float64})
    return df.with_columns(**{k: pl.Series(v) for k, v in extra_cols.items()})


def check(built: Built, rows_in: int) -> pl.DataFrame:
    """The accounting identity and the output contract; returns the collected output."""
    assert built.rows_in == rows_in
    assert built.rows_in == built.rows_kept + sum(built.drops.values()), (built.rows_kept, built.drops)
    assert all(n > 0 for n in built.drops.values())
    out = built.frame.collect()
    validate(conform(out.to_arrow(), built.kind), built.kind)
    return out


def pair_ids(out: pl.DataFrame) -> list[tuple[str, str]]:
    return list(zip(out["chosen_id"].to_list(), out["rejected_id"].to_list(), strict=True))


@pytest.fixture
def ctx() -> StepContext:
    return StepContext(seed=0, progress=False)
