import polars as pl
import pytest
from pydantic import ValidationError

from builders.curriculum import CurriculumConfig, build_curriculum
from builders.pairs import PairsConfig, build_pairs
from prefdata.errors import SchemaError
from tests.builders.conftest import check, responses


def pairs_frame(margins, prompts=None, **extra):
    n = len(margins)
    prompts = prompts or [f"p{i}" for i in range(n)]
    return pl.DataFrame({
        "prompt_id": prompts, "prompt": prompts, "chosen": [f"c{i}" for i in range(n)],
        "rejected": [f"r{i}" for i in range(n)], "chosen_id": [f"c{i}" for i in range(n)],
        "rejected_id": [f"r{i}" for i in range(n)],
        "score_chosen": [10.0] * n, "score_rejected": [10.0 - (m or 0) for m in margins],
        "margin": pl.Series(margins, dtype=pl.Float64), "weight": [1.0] * n,
        "stage": pl.Series([0] * n, dtype=pl.Int32), "strategy": ["all_pairs"] * n, **extra})


def stages_of(out):
    return dict(zip(out["chosen_id"].to_list(), out["stage"].to_list(), strict=True))


def test_margin_quantiles_easy_first_sorted_by_stage(ctx):
    built = build_curriculum(pairs_frame([4, 9, 5, 8, 6, 7]).lazy(), CurriculumConfig(stages=3), ctx)
    out = check(built, 6)
    assert stages_of(out) == {"c1": 0, "c3": 0, "c4": 1, "c5": 1, "c0": 2, "c2": 2}
    assert out["chosen_id"].to_list() == ["c1", "c3", "c4", "c5", "c0", "c2"]   # stage, then input order
    assert built.info["stage_sizes"] == [2, 2, 2]
    assert built.info["stage_ranges"] == {0: [8.0, 9.0], 1: [6.0, 7.0], 2: [4.0, 5.0]}


def test_hard_to_easy_reverses(ctx):
    out = check(build_curriculum(pairs_frame([4, 9, 5, 8, 6, 7]).lazy(),
                                 CurriculumConfig(stages=3, order="hard_to_easy"), ctx), 6)
    assert stages_of(out) == {"c0": 0, "c2": 0, "c4": 1, "c5": 1, "c1": 2, "c3": 2}


def test_equal_margins_share_a_stage(ctx):
    # sorted easy->hard: 9 5 5 5 5 1; the 5s span positions 1..4, middle 2.5 -> stage floor(2.5*2/6) = 0
    built = build_curriculum(pairs_frame([5, 9, 5, 1, 5, 5]).lazy(), CurriculumConfig(stages=2), ctx)
    out = check(built, 6)
    assert stages_of(out) == {"c0": 0, "c1": 0, "c2": 0, "c3": 1, "c4": 0, "c5": 0}
    assert built.info["stage_sizes"] == [5, 1]


def test_kth_easiest_per_prompt_is_the_paper_construction(ctx):
    # Curry-DPO: 4 rated responses, pairs anchored on the best; stage k = each prompt's k-th easiest pair
    df = responses({"p": [4, 1, 3, 2], "q": [9, 5, 8]})
    pairs = build_pairs(df.lazy(), PairsConfig(strategy="curry"), ctx).frame
    built = build_curriculum(pairs, CurriculumConfig(by="kth_easiest", stages=None), ctx)
    out = check(built, 5)
    got = list(zip(out["stage"].to_list(), out["chosen_id"].to_list(), out["rejected_id"].to_list(), strict=True))
    assert got == [(0, "p:0", "p:1"), (0, "q:0", "q:1"), (1, "p:0", "p:3"), (1, "q:0", "q:2"), (2, "p:0", "p:2")]
    assert built.info["stage_sizes"] == [2, 2, 1]


def test_kth_easiest_overflow(ctx):
    df = responses({"p": [4, 1, 3, 2]})
    pairs = build_pairs(df.lazy(), PairsConfig(strategy="curry"), ctx).frame
    last = check(build_curriculum(pairs, CurriculumConfig(by="kth_easiest", stages=2), ctx), 3)
    assert last["stage"].to_list() == [0, 1, 1]
    built = build_curriculum(pairs, CurriculumConfig(by="kth_easiest", stages=2, overflow="drop"), ctx)
    assert check(built, 3)["stage"].to_list() == [0, 1]
    assert built.drops == {"beyond stage 1": 1}


def test_rank_gap_and_a_given_column(ctx):
    df = pairs_frame([1, 1, 1], rank_chosen=pl.Series([1, 1, 2], dtype=pl.Int32),
                     rank_rejected=pl.Series([4, 2, 3], dtype=pl.Int32), difficulty=[0.1, 0.9, 0.5])
    out = check(build_curriculum(df.lazy(), CurriculumConfig(stages=3, by="rank_gap"), ctx), 3)
    assert stages_of(out) == {"c0": 0, "c1": 1, "c2": 1}            # gaps 3, 1, 1: the tie shares a stage
    col = check(build_curriculum(df.lazy(), CurriculumConfig(stages=3, by="difficulty", higher_is_easier=False),
                                 ctx), 3)
    assert stages_of(col) == {"c0": 0, "c2": 1, "c1": 2}


def test_null_margins_error_or_drop(ctx):
    df = pairs_frame([3, None, 1])
    with pytest.raises(SchemaError, match=r"margin is null in 1 row.*first offending row 1"):
        build_curriculum(df.lazy(), CurriculumConfig(), ctx)
    built = build_curriculum(df.lazy(), CurriculumConfig(stages=2, missing="drop"), ctx)
    assert check(built, 3)["chosen_id"].to_list() == ["c0", "c2"]
    assert built.drops == {"margin is null": 1}


def test_config_and_columns_checked(ctx):
    with pytest.raises(ValidationError, match="only allowed with by: kth_easiest"):
        CurriculumConfig(stages=None)
    with pytest.raises(SchemaError, match="rank_chosen"):
        build_curriculum(pairs_frame([1]).lazy(), CurriculumConfig(by="rank_gap"), ctx)
    with pytest.raises(SchemaError, match="expected a number"):
        build_curriculum(pairs_frame([1]).lazy(), CurriculumConfig(by="prompt"), ctx)
