"""Prompt sampling for rounds: fresh prompts never repeat before the pool is exhausted, held-out prompts are
disjoint from the training pool (checked), and everything is a pure function of (seed, round)."""
from __future__ import annotations

import polars as pl
import pytest

from prefdata.errors import PrefdataError, RecipeError
from prefdata.prompt_pool import check_disjoint, holdout, prompt_table, round_indices


@pytest.mark.parametrize("n_pool,per_round", [(10, 4), (7, 7), (9, 2), (5, 3)])
def test_fresh_never_repeats_before_exhaustion(n_pool, per_round):
    seq = []
    for r in range(12):
        take = round_indices(n_pool, per_round=per_round, fresh=True, seed=3, round_=r)
        assert len(take) == per_round == len(set(take))           # never twice in one round
        seq += take
    # the sequence of used prompts is a concatenation of whole passes over the pool
    for start in range(0, len(seq) - n_pool + 1, n_pool):
        assert sorted(seq[start:start + n_pool]) == list(range(n_pool))
    # a prompt is used again only once every prompt has been used as often as it
    counts = [0] * n_pool
    for p in seq:
        assert counts[p] == min(counts)
        counts[p] += 1


def test_straddling_round_by_hand():
    # pool 5, 3 per round: round 0 = p0[0:3], round 1 = p0[3:5] + the first of p1 not already in round 1
    import numpy as np
    p0 = np.random.Generator(np.random.PCG64([0, 0])).permutation(5).tolist()
    p1 = np.random.Generator(np.random.PCG64([0, 1])).permutation(5).tolist()
    assert round_indices(5, per_round=3, fresh=True, seed=0, round_=0) == p0[:3]
    tail = p0[3:]
    nxt = [i for i in p1 if i not in tail] + [i for i in p1 if i in tail]
    assert round_indices(5, per_round=3, fresh=True, seed=0, round_=1) == tail + nxt[:1]
    assert round_indices(5, per_round=3, fresh=True, seed=0, round_=2) == nxt[1:4]


def test_same_set_and_whole_pool_and_seed():
    same = [round_indices(10, per_round=4, fresh=False, seed=1, round_=r) for r in range(3)]
    assert same[0] == same[1] == same[2] and len(set(same[0])) == 4
    assert round_indices(6, per_round=None, fresh=False, seed=1, round_=5) == list(range(6))
    assert round_indices(10, per_round=4, fresh=True, seed=1, round_=0) != \
        round_indices(10, per_round=4, fresh=True, seed=2, round_=0)
    with pytest.raises(PrefdataError, match="per_round 11 exceeds"):
        round_indices(10, per_round=11, fresh=True, seed=0, round_=0)


def test_prompt_table_keeps_prompt_level_columns_only():
    df = pl.DataFrame({"prompt_id": ["b", "b", "a"], "prompt": ["B?", "B?", "A?"], "response": ["x", "y", "z"],
                       "reference": ["rb", "rb", "ra"], "judgment": ["j1", "j2", "j3"]})
    out = prompt_table(df, where="t")
    assert out.columns == ["prompt_id", "prompt", "reference"]      # judgment differs within prompt b
    assert out.to_dicts() == [{"prompt_id": "a", "prompt": "A?", "reference": "ra"},
                              {"prompt_id": "b", "prompt": "B?", "reference": "rb"}]


def test_holdout_is_seeded_disjoint_and_overlap_is_refused():
    pool = prompt_table(pl.DataFrame({"prompt": [f"question {i}" for i in range(20)]}), where="t")
    train, held = holdout(pool, 5, seed=0)
    assert held.height == 5 and train.height == 15
    assert not set(train["prompt_id"]) & set(held["prompt_id"])
    assert holdout(pool.reverse(), 5, seed=0)[1].sort("prompt_id").equals(held.sort("prompt_id"))  # order-free
    check_disjoint(train, held, path="prompts.eval_prompts")
    # the same text under another id (whitespace differs) is still an overlap
    sneaky = pl.DataFrame({"prompt_id": ["other"], "prompt": ["  question   3 "]})
    with pytest.raises(RecipeError, match=r"prompts.eval_prompts: 1 held-out evaluation prompt\(s\) are also in"):
        check_disjoint(pool, sneaky, path="prompts.eval_prompts", file="r.yaml")
    with pytest.raises(PrefdataError, match="leaves no training prompts"):
        holdout(pool, 20, seed=0)
