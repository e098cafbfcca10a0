"""split / cluster_id / source are one per prompt: pairs and lists keep them as one column, so a `split` step
before `pairs` or `lists` still reaches the trainer; a column that varies within a prompt stays per response."""
import polars as pl

from builders.base import StepContext
from builders.lists import ListsConfig, build_lists
from builders.pairs import PairsConfig, build_pairs

RESP = pl.DataFrame({
    "prompt_id": ["a", "a", "a", "b", "b"], "prompt": ["x", "x", "x", "y", "y"],
    "response_id": ["1", "2", "3", "4", "5"], "response": ["r1", "r2", "r3", "r4", "r5"],
    "score": [1.0, 2.0, 3.0, 3.0, 1.0], "split": ["train", "train", "train", "test", "test"],
    "cluster_id": ["c1", "c1", "c1", "c2", "c2"], "source": ["s", "t", "t", "u", "u"]})


def test_pairs_keep_prompt_grouping_columns_once():
    out = build_pairs(RESP.lazy(), PairsConfig(strategy="best_vs_worst"), StepContext()).frame.collect()
    assert out.select("prompt_id", "split", "cluster_id").rows() == [("a", "train", "c1"), ("b", "test", "c2")]
    # source differs between a's responses: per response, as before
    assert "source" not in out.columns
    assert out.select("source_chosen", "source_rejected").rows() == [("t", "s"), ("u", "u")]


def test_lists_keep_prompt_grouping_columns():
    out = build_lists(RESP.lazy(), ListsConfig(), StepContext()).frame.collect()
    assert out.select("prompt_id", "split", "cluster_id").rows() == [("a", "train", "c1"), ("b", "test", "c2")]
    assert "source" not in out.columns
