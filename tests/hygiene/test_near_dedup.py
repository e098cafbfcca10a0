"""`near_dedup`: planted near-duplicates (edits of known size) are clustered and far pairs are not, on a hand-made
set whose Jaccard similarities are worked out below; keep rules; flag mode; near-duplicate responses within a
prompt; the same clusters in partitioned builds as in memory (clusters spanning partitions); `split` keeping a
cluster on one side; row accounting; recipe errors naming the YAML path."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from builders.base import StepContext
from builders.minhash import optimal_bands
from builders.near_dedup import NearDedupConfig, build_near_dedup
from builders.shingles import normalize, shingle_hashes
from builders.split import SplitConfig, build_split
from builders.stable_hash import hash_strings
from catalog import Catalog
from prefdata.build import run_recipe
from prefdata.errors import RecipeError
from prefdata.recipe import parse_recipe
from tests.builders.conftest import check


def words(tag: str, n: int = 80) -> list[str]:
    return [f"{tag}{i}" for i in range(n)]


def edit(ws: list[str], replace: tuple[int, ...] = (), append: int = 0) -> str:
    out = [f"x{i}" if i in replace else w for i, w in enumerate(ws)] + [f"new{k}" for k in range(append)]
    return " ".join(out)


A, B = words("a"), words("b")
# 80 distinct words -> 76 word 5-grams. Replacing one word changes the 5-grams that contain it: 1 at the end,
# 5 in the middle; appending k words adds k 5-grams.
TEXTS = {
    "A": edit(A),
    "A_last": edit(A, replace=(79,)),                       # J = 75 / 77 = 0.974
    "A_mid": edit(A, replace=(40,)),                        # J = 71 / 81 = 0.877
    "A_app": edit(A, append=2),                             # J = 76 / 78 = 0.974
    "A_far": edit(A, replace=(10, 20, 30, 40, 50, 60)),     # J = 46 / 106 = 0.434
    "B": edit(B),
    "B_far": edit(B, replace=(15, 35, 55, 70)),             # J = 56 / 96 = 0.583
    "C": " ".join(words("c")),
}
ROWS = {"A": 1, "A_last": 3, "A_mid": 2, "A_app": 1, "A_far": 2, "B": 1, "B_far": 1, "C": 2}
SCORE = {"A": 5.0, "A_last": 1.0, "A_mid": 9.0, "A_app": 2.0, "A_far": 1.0, "B": 1.0, "B_far": 1.0, "C": 1.0}


def jaccard(a: str, b: str, n: int = 5) -> float:
    def grams(t: str) -> set[tuple[str, ...]]:
        w = t.split()
        return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}
    ga, gb = grams(a), grams(b)
    return len(ga & gb) / len(ga | gb)


def table(texts: dict[str, str] = TEXTS, rows: dict[str, int] = ROWS) -> pl.DataFrame:
    out = [{"prompt_id": p, "prompt": t, "response_id": f"{p}:{i}", "response": f"answer {i}",
            "score": SCORE.get(p, 1.0) + i}
           for p, t in texts.items() for i in range(rows[p])]
    return pl.DataFrame(out)


def clusters(out: pl.DataFrame) -> dict[str, set[str]]:
    per = out.group_by("cluster_id").agg(pl.col("prompt_id").unique())
    return {c: set(ps) for c, ps in per.iter_rows()}


def test_planted_jaccard_values_are_the_hand_worked_ones():
    a = TEXTS["A"]
    got = {p: round(jaccard(a, TEXTS[p]), 3) for p in ("A_last", "A_mid", "A_app", "A_far")}
    assert got == {"A_last": round(75 / 77, 3), "A_mid": round(71 / 81, 3), "A_app": round(76 / 78, 3),
                   "A_far": round(46 / 106, 3)}
    assert jaccard(TEXTS["B"], TEXTS["B_far"]) == 56 / 96


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_near_duplicates_found_and_far_pairs_not(seed):
    df = table()
    built = build_near_dedup(df.lazy(), NearDedupConfig(threshold=0.7, seed=seed), StepContext())
    out = check(built, 13)
    # A and its three small edits form one cluster kept as A (first); the far edits stay alone
    assert set(out["prompt_id"].unique()) == {"A", "A_far", "B", "B_far", "C"}
    assert built.drops == {"near-duplicate of prompt A": 3 + 2 + 1}
    assert built.rows_kept == 7 and out.height == 7
    assert dict(out.select("prompt_id", "cluster_id").unique().iter_rows()) == \
        {"A": "A", "A_far": "A_far", "B": "B", "B_far": "B_far", "C": "C"}
    i = built.info
    assert (i["prompts"], i["clusters"], i["prompts_in_clusters"], i["largest_cluster"]) == (8, 1, 4, 4)
    assert (i["bands"], i["rows"], i["prompts_dropped"], i["rows_dropped"]) == (14, 9, 3, 6)
    assert out.columns == df.columns + ["cluster_id"]
    assert out.drop("cluster_id").equals(df.filter(pl.col("prompt_id").is_in(["A", "A_far", "B", "B_far", "C"])))


@pytest.mark.parametrize(("keep", "kept"), [("first", "A"), ("most_responses", "A_last"), ("best_score", "A_mid")])
def test_keep_rule_picks_the_cluster_representative(keep, kept):
    built = build_near_dedup(table().lazy(), NearDedupConfig(threshold=0.7, keep=keep), StepContext())
    out = check(built, 13)
    members = {"A", "A_last", "A_mid", "A_app"}
    assert set(out["prompt_id"].unique()) & members == {kept}
    assert built.drops == {f"near-duplicate of prompt {kept}": sum(ROWS[p] for p in members - {kept})}


def test_flag_keeps_every_row_and_names_the_cluster_then_split_keeps_it_whole():
    df = table()
    built = build_near_dedup(df.lazy(), NearDedupConfig(threshold=0.7, action="flag", keep="best_score"),
                             StepContext())
    out = check(built, 13)
    assert built.drops == {} and out.height == 13 and out.drop("cluster_id").equals(df)
    assert clusters(out) == {"A_mid": {"A", "A_last", "A_mid", "A_app"}, "A_far": {"A_far"}, "B": {"B"},
                             "B_far": {"B_far"}, "C": {"C"}}
    for seed in range(6):
        split = build_split(out.lazy(), SplitConfig(test=2, seed=seed), StepContext()).frame.collect()
        assert split.group_by("cluster_id").agg(pl.col("split").n_unique())["split"].max() == 1


def test_without_verification_clusters_are_components_of_all_candidate_pairs():
    built = build_near_dedup(table().lazy(), NearDedupConfig(threshold=0.7, verify=False, action="flag"),
                             StepContext())
    assert clusters(check(built, 13))["A"] == {"A", "A_last", "A_mid", "A_app"}
    assert "candidate_pairs" not in built.info


def test_char_shingles_find_typos_and_empty_prompts_stay_alone():
    texts = {"p": "What is the capital city of France, and why?", "q": "what's the capitol city of France and why",
             "r": "Name three rivers that flow through Germany.", "e": "", "f": "?!"}
    rows = dict.fromkeys(texts, 1)
    built = build_near_dedup(table(texts, rows).lazy(),
                             NearDedupConfig(shingle=3, shingle_unit="char", threshold=0.6), StepContext())
    out = check(built, 5)
    assert built.drops == {"near-duplicate of prompt p": 1}
    # "" and "?!" normalize to nothing: no shingles, each its own cluster (never merged with each other)
    assert set(out["prompt_id"]) == {"p", "r", "e", "f"} and built.info["texts_without_shingles"] == 2


def test_identical_prompts_are_one_cluster_without_listing_pairs():
    texts = {f"p{i}": "the same prompt, asked again and again by many users of the service" for i in range(3000)}
    rows = dict.fromkeys(texts, 1)
    built = build_near_dedup(table(texts, rows).lazy(), NearDedupConfig(), StepContext())
    out = check(built, 3000)
    assert out["prompt_id"].to_list() == ["p0"] and built.info["identical_texts"] == 2999
    assert built.info["candidate_pairs"] == 0 and built.info["largest_cluster"] == 3000


def test_near_duplicate_responses_within_a_prompt():
    long = " ".join(words("r", 30))
    df = pl.DataFrame({
        "prompt_id": ["p", "p", "p", "q", "q"],
        "prompt": ["P", "P", "P", "Q", "Q"],
        "response_id": ["p0", "p1", "p2", "q0", "q1"],
        "response": [long, long + " indeed", "something else entirely, with its own words", long, "other"],
        "score": [1.0, 3.0, 2.0, 1.0, 1.0]})
    built = build_near_dedup(df.lazy(), NearDedupConfig(on="response", threshold=0.7, keep="best_score"),
                             StepContext())
    out = check(built, 5)
    # within p: p0 ~ p1 (J = 26/27), the better-scored p1 kept; q0 equals p0 but is in another prompt
    assert built.drops == {"near-duplicate of response p1": 1}
    assert out["response_id"].to_list() == ["p1", "p2", "q0", "q1"]
    assert out["response_cluster_id"].to_list() == ["p1", "p2", "q0", "q1"]
    assert "cluster_id" not in out.columns


def test_shingles_normalize_and_hash_as_documented():
    norm = pl.select(normalize(pl.lit(pl.Series(["Don't STOP—now!", "  Ｆｕｌｌ width  "])))).to_series()
    assert norm.to_list() == ["don t stop now", "full width"]
    sh = shingle_hashes(pl.Series(["a b c d e f g", "a b", "", None]), 5)
    assert sh.counts.tolist() == [3, 1, 0, 0]       # 7 words: 3 five-grams; 2 words: one shingle; none
    one = shingle_hashes(pl.Series(["alpha beta"]), 1)
    from builders.shingles import _ngram_weights
    from builders.stable_hash import GOLDEN, splitmix64
    with np.errstate(over="ignore"):
        expected = splitmix64(hash_strings(pl.Series(["alpha", "beta"])) * _ngram_weights(1)[0] ^ GOLDEN)
    assert one.hashes.tolist() == expected.tolist()


def test_optimal_bands_are_datasketchs():
    # the (b, r) datasketch's MinHashLSH picks for these thresholds (weights 0.5 / 0.5)
    assert optimal_bands(0.8, 128) == (9, 13)
    assert optimal_bands(0.7, 128) == (14, 9)
    assert optimal_bands(0.5, 64) == (14, 4)


# ------------------------------------------------------------------------------ builds

def _planted_catalog(path, seed: int = 3) -> Catalog:
    """A catalog dataset of 40 prompts (20 bases + an edited copy each), rows of a prompt scattered."""
    rng = np.random.default_rng(seed)
    texts, rows = {}, {}
    for k in range(20):
        base = words(f"t{k}_", 40)
        texts[f"base{k}"] = " ".join(base)
        texts[f"copy{k}"] = edit(base, replace=(int(rng.integers(0, 40)),))
        rows[f"base{k}"], rows[f"copy{k}"] = 1 + k % 3, 2
    df = table(texts, rows).sample(fraction=1.0, shuffle=True, seed=seed)
    cat = Catalog.open(path)
    cat.write("planted", df.to_arrow())
    return cat


def test_partitioned_build_finds_the_same_clusters_across_partitions(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: out\nseed: 7\nsource: {dataset: planted}\nsteps:\n"
                      "  - near_dedup: {threshold: 0.6, action: flag}\n  - split: {test: 0.25}\n")
    results, tables = {}, {}
    for parts in (1, 2, 3):
        cat = _planted_catalog(tmp_path / f"c{parts}")
        results[parts] = run_recipe(recipe, cat, progress=False, partitions=parts)
        tables[parts] = pl.from_arrow(cat.read("out"))
    mem = tables[1]
    assert sorted(map(sorted, clusters(mem).values())) == sorted([f"base{k}", f"copy{k}"] for k in range(20))
    for parts in (2, 3):
        assert results[parts].content_hash == results[1].content_hash
        m, p = results[1].steps[0], results[parts].steps[0]
        assert {k: v for k, v in p.info.items() if k != "partitions"} == m.info
        assert (p.rows_in, p.rows_kept, p.summary) == (m.rows_in, m.rows_kept, m.summary)
        # some clusters really span partitions (the partition of a prompt is hash(prompt_id) % P)
        part = mem.select("prompt_id", "cluster_id").unique().with_columns(
            (pl.col("prompt_id").hash(11) % parts).alias("part"))
        assert part.group_by("cluster_id").agg(pl.col("part").n_unique())["part"].max() == 2
    assert mem.group_by("cluster_id").agg(pl.col("split").n_unique())["split"].max() == 1


def test_partitioned_drop_keeps_the_globally_first_prompt(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: out\nsource: {dataset: planted}\nsteps:\n  - near_dedup: {threshold: 0.6}\n")
    got = {}
    for parts in (1, 3):
        cat = _planted_catalog(tmp_path / f"c{parts}")
        res = run_recipe(recipe, cat, progress=False, partitions=parts)
        got[parts] = (res.content_hash, res.steps[0].drops, res.steps[0].rows_in, res.steps[0].rows_kept)
    src = pl.from_arrow(Catalog.open(tmp_path / "c1").read("planted"))
    pos = dict(src.with_row_index("i").group_by("prompt_id").agg(pl.col("i").min()).iter_rows())
    rows = dict(src.group_by("prompt_id").len().iter_rows())
    # of base_k / copy_k, the one whose first row comes first in the source is kept, the other dropped
    expected = {}
    for k in range(20):
        kept, dropped = sorted((f"base{k}", f"copy{k}"), key=pos.get)
        expected[f"near-duplicate of prompt {kept}"] = rows[dropped]
    assert got[1] == got[3] and got[1][1] == expected


@pytest.mark.parametrize(("cfg", "where", "message"), [
    ({"threshold": 1.5}, "steps[0].near_dedup.threshold", "less than 1"),
    ({"bands": 8}, "steps[0].near_dedup", "give both bands and rows"),
    ({"bands": 20, "rows": 8}, "steps[0].near_dedup", "bands x rows = 20 x 8 = 160 is more than num_perm"),
    ({"on": "response", "keep": "most_responses"}, "steps[0].near_dedup", "needs on: prompt"),
    ({"keep": "longest"}, "steps[0].near_dedup.keep", "first"),
    ({"shingle_size": 5}, "steps[0].near_dedup.shingle_size", "unknown field"),
])
def test_bad_configs_name_the_yaml_path(cfg, where, message):
    with pytest.raises(RecipeError) as e:
        parse_recipe({"name": "x", "source": {"dataset": "d"}, "steps": [{"near_dedup": cfg}]}, file="r.yaml")
    assert str(e.value).startswith(f"r.yaml: {where}: ") and message in str(e.value)
