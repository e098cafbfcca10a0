"""Ensemble methods and the agreement report on a hand-worked example.

Prompt p0: a = [1, 2, 3], b = [10, 30, 20]; prompt p1: a = [5, 5], b = [0, 1]; a sixth row has b = null."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from builders.base import StepContext
from builders.ensemble import EnsembleConfig, build_ensemble
from prefdata.errors import SchemaError
from prefdata.schema import validate

A = [1.0, 2.0, 3.0, 5.0, 5.0, 4.0]
B = [10.0, 30.0, 20.0, 0.0, 1.0, None]


def _frame() -> pl.LazyFrame:
    return pl.LazyFrame({"prompt_id": ["p0"] * 3 + ["p1"] * 3, "prompt": ["x"] * 6,
                         "response_id": [f"r{i}" for i in range(6)], "response": ["y"] * 6,
                         "scores": [{"a": a, "b": b} for a, b in zip(A, B, strict=True)]})


def _run(**kw):
    b = build_ensemble(_frame(), EnsembleConfig.model_validate(kw), StepContext(progress=False))
    out = b.frame.collect()
    validate(out.to_arrow(), "responses")
    assert b.drops == {"scores.b is null": 1} and b.rows_in == 6 and b.rows_kept == 5
    return b, out


def test_rank_mean_dataset_scope_hand_worked():
    _, out = _run(by=["a", "b"], method="rank_mean")
    # a ranks (avg ties) [1,2,3,4.5,4.5] -> [0,.25,.5,.875,.875]; b ranks [3,5,4,1,2] -> [.5,1,.75,0,.25]
    assert out["score"].to_list() == pytest.approx([0.25, 0.625, 0.625, 0.4375, 0.5625])
    assert out["scores"].struct.field("b").to_list() == B[:5]          # per-objective vector kept


def test_rank_mean_prompt_scope_hand_worked():
    _, out = _run(by=["a", "b"], method="rank_mean", scope="prompt")
    assert out["score"].to_list() == pytest.approx([0.0, 0.75, 0.75, 0.25, 0.75])


def test_zscore_mean_matches_numpy():
    _, out = _run(by=["a", "b"], method="zscore_mean")
    a, b = np.array(A[:5]), np.array(B[:5], dtype=float)
    want = ((a - a.mean()) / a.std() + (b - b.mean()) / b.std()) / 2
    np.testing.assert_allclose(out["score"].to_numpy(), want, rtol=1e-12)
    assert out["score"][0] == pytest.approx((-1.375 + (10 - 12.2) / np.sqrt(131.36)) / 2)


def test_weighted_sum_and_lower_is_better():
    _, out = _run(by=["a", "b"], method="weighted_sum", weights={"a": 2.0, "b": 0.5}, store_as="combined")
    assert out["score"].to_list() == pytest.approx([7.0, 19.0, 16.0, 10.0, 10.5])
    assert out["scores"].struct.field("combined").to_list() == pytest.approx([7.0, 19.0, 16.0, 10.0, 10.5])
    _, flip = _run(by=["a", "b"], method="weighted_sum", weights={"a": 2.0, "b": 0.5}, lower_is_better=["a"])
    assert flip["score"].to_list() == pytest.approx([3.0, 11.0, 4.0, -10.0, -9.5])


def test_agreement_report_hand_worked():
    b, _ = _run(by=["a", "b"], method="rank_mean")
    ag = b.info["agreement"]
    # p0 pairs: (0,1) concordant, (0,2) concordant, (1,2) discordant; p1 pair: a tied
    assert ag["response_pairs"] == 4
    pair = ag["scorer_pairs"]["a~b"]
    assert pair["pairwise_agreement"] == pytest.approx(2 / 3)
    assert pair["kendall_tau_mean"] == pytest.approx(1 / 3) and pair["prompts_with_tau"] == 1
    assert ag["disagreement_share"] == pytest.approx(0.25)


def test_missing_scores_field_is_a_schema_error():
    with pytest.raises(SchemaError, match="no field"):
        build_ensemble(_frame(), EnsembleConfig(by=["a", "nope"]), StepContext(progress=False))


@pytest.mark.parametrize("bad", [{"by": ["a"], "method": "weighted_sum"}, {"by": ["a", "a"]},
                                 {"by": ["a"], "weights": {"b": 1.0}}, {"by": ["a"], "lower_is_better": ["z"]}])
def test_config_errors(bad):
    from pydantic import ValidationError
    with pytest.raises(ValidationError):
        EnsembleConfig.model_validate(bad)
