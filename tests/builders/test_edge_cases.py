"""Degenerate inputs: empty tables and tables where nothing survives still give a valid, accounted output."""
import pytest

from builders.curriculum import CurriculumConfig, build_curriculum
from builders.filter import DedupConfig, FilterConfig, build_dedup, build_filter
from builders.lists import ListsConfig, build_lists
from builders.pairs import PairsConfig, build_pairs
from builders.rank import RankConfig, build_rank
from tests.builders.conftest import check, responses

EMPTY = responses({}).head(0)
NOTHING_SCORED = responses({"p": [None, None], "q": [None]})


@pytest.mark.parametrize("frame, n", [(EMPTY, 0), (NOTHING_SCORED, 3)])
def test_response_steps(ctx, frame, n):
    out = check(build_rank(frame.lazy(), RankConfig(), ctx), n)
    assert out.height == 0
    for strategy in ("best_vs_worst", "best_vs_all", "all_pairs", "adjacent", "curry"):
        built = build_pairs(frame.lazy(), PairsConfig(strategy=strategy, max_pairs_per_prompt=2), ctx)
        assert check(built, n).height == 0
        pairs = built.frame
        cur = build_curriculum(pairs, CurriculumConfig(), ctx)
        assert check(cur, 0).height == 0 and cur.info["stage_sizes"] == [0, 0, 0]
    assert check(build_lists(frame.lazy(), ListsConfig(k=2), ctx), n).height == 0
    assert check(build_dedup(frame.lazy(), DedupConfig(), ctx), n).height == n
    assert check(build_filter(frame.lazy(), FilterConfig(), ctx), n).height == n


def test_kth_easiest_on_no_pairs(ctx):
    pairs = build_pairs(EMPTY.lazy(), PairsConfig(), ctx).frame
    built = build_curriculum(pairs, CurriculumConfig(by="kth_easiest", stages=None), ctx)
    assert check(built, 0).height == 0
