"""MODPO inputs: score -> pairs carries the other objectives as scores_chosen / scores_rejected, and the
trainer's data loader turns them into the MODPO loss's other_chosen / other_rejected tensors."""
from __future__ import annotations

import polars as pl

from builders.base import StepContext
from builders.pairs import PairsConfig, build_pairs
from builders.score import ScoreConfig, build_score
from prefdata.schema import validate


def test_other_objectives_reach_pairs():
    frame = pl.LazyFrame({"prompt_id": ["p"] * 3, "prompt": ["q"] * 3, "response_id": ["a", "b", "c"],
                          "response": ["ok", "a 1 long answer here", "two words"]})
    cfg = ScoreConfig.model_validate({"scorers": [
        {"kind": "rules", "name": "short", "rule": "length", "unit": "words", "max": 2},
        {"kind": "rules", "name": "digits", "rule": "regex", "pattern": r"\d"}],
        "set_score": "short", "move_set_score": True})
    ctx = StepContext(progress=False)
    scored = build_score(frame, cfg, ctx).frame
    pairs = build_pairs(scored, PairsConfig(strategy="best_vs_all"), ctx).frame.collect()
    validate(pairs.to_arrow(), "pairs")
    assert pairs.height == 1 and pairs["rejected_id"].to_list() == ["b"]
    row = pairs.row(0, named=True)
    assert row["scores_chosen"] == {"digits": 0.0} and row["scores_rejected"] == {"digits": 1.0}
    assert row["margin"] == 1.0
