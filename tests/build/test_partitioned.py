"""Out-of-core builds (prefdata/partitioned.py): by prompt partitions, the same rows, order, content hash and
row accounting as the in-memory build, for any number of partitions and for interleaved input."""
from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from catalog import Catalog
from prefdata.build import run_recipe
from prefdata.errors import RecipeError, SchemaError
from prefdata.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = ("step", "rows_in", "rows_kept", "drops", "rows_out")


def _acct(res):
    return [tuple(getattr(s, k) for k in ACCOUNT) for s in res.steps]


def _recipe(tmp_path: Path, body: str, name: str = "r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(body)
    return p


@pytest.fixture(scope="module")
def shuffled(tmp_path_factory):
    """The bundled Arena responses with each prompt's rows scattered through the table, as a catalog dataset."""
    cat = Catalog.open(tmp_path_factory.mktemp("cat"))
    run_recipe(None, cat, progress=False)
    src = pl.from_arrow(cat.read("arena-curry-source")).sample(fraction=1.0, shuffle=True, seed=4)
    cat.write("arena-shuffled", src.to_arrow(), message="shuffled")
    return cat


def test_default_recipe_by_partitions_equals_in_memory(tmp_path):
    mem = run_recipe(None, Catalog.open(tmp_path / "a"), progress=False)
    cat = Catalog.open(tmp_path / "b")
    part = run_recipe(None, cat, progress=False, partitions=3)
    assert part.content_hash == mem.content_hash and part.rows == mem.rows == 2328
    assert _acct(part) == _acct(mem)
    assert part.steps[2].info["stage_sizes"] == [819, 683, 826] and part.lineage["partitions"] == 3
    assert cat.read("arena-curry").equals(Catalog.open(tmp_path / "a").read("arena-curry"))
    assert cat.verify("arena-curry")["ok"]
    # the partition count is not part of the recipe's identity: same rows, so nothing new is written
    again = run_recipe(None, cat, progress=False, partitions=7)
    assert (again.written, again.version) == (False, 1)
    assert not (cat.root / "_work").exists()                   # scratch files are removed


@pytest.mark.parametrize("steps", [
    # seeded selection and tie-breaks are prompt-local: a 2-partition run equals a 1-partition run
    "  - rank: {by: score}\n  - pairs: {strategy: all_pairs, max_pairs_per_prompt: 3, select: random}\n"
    "  - curriculum: {stages: 4, by: margin, order: hard_to_easy}\n",
    "  - dedup: {}\n  - rank: {by: score}\n  - pairs: {strategy: best_vs_all, tie_break: seeded, min_margin: 1}\n",
    "  - rank: {by: score}\n  - lists: {k: 4}\n",
    "  - rank: {by: score}\n",
], ids=["random_pairs_curriculum", "dedup_seeded_best_vs_all", "lists", "rank_only"])
@pytest.mark.parametrize("parts", [2, 3])
def test_interleaved_dataset_source_any_partitions(shuffled, tmp_path, steps, parts):
    r = _recipe(tmp_path, f"name: out\nseed: 11\nsource: {{dataset: arena-shuffled}}\nsteps:\n{steps}")
    mem_cat = Catalog.open(tmp_path / "mem")
    mem_cat.write("arena-shuffled", shuffled.read("arena-shuffled"))
    mem = run_recipe(r, mem_cat, progress=False, partitions=1)
    part = run_recipe(r, shuffled, progress=False, partitions=parts)
    assert part.content_hash == mem.content_hash and part.rows == mem.rows > 0
    assert _acct(part) == _acct(mem)
    assert part.lineage["partitions"] == parts and mem.lineage["partitions"] == 1


def test_recipe_partitions_option_and_whole_table_steps(tmp_path, shuffled):
    src = "name: z\nsource: {dataset: arena-shuffled}\n"
    zscore = "  - rank: {by: score, aggregate: zscore_mean}\n  - pairs: {}\n"
    with pytest.raises(RecipeError, match=r"partitions: step 'rank' needs the whole table"):
        load_recipe(_recipe(tmp_path, f"{src}partitions: 2\nsteps:\n{zscore}"))
    with pytest.raises(RecipeError, match="partitions must be a positive integer or auto"):
        load_recipe(_recipe(tmp_path, f"{src}partitions: 0\nsteps:\n{zscore}"))
    assert load_recipe(_recipe(tmp_path, f"{src}partitions: 4\nsteps:\n  - rank: {{}}\n")).partitions == 4
    # auto: a recipe that needs the whole table runs in memory; asking for partitions at run time is an error
    auto = _recipe(tmp_path, f"{src}steps:\n{zscore}")
    assert run_recipe(auto, shuffled, progress=False).lineage["partitions"] == 1
    with pytest.raises(RecipeError, match=r"steps\[0\]\.rank: step 'rank' needs the whole table"):
        run_recipe(auto, shuffled, progress=False, partitions=2)
    kth = _recipe(tmp_path, f"{src}steps:\n  - rank: {{}}\n  - pairs: {{}}\n  - curriculum: {{by: kth_easiest}}\n")
    with pytest.raises(RecipeError, match="curriculum.*needs the whole table"):
        run_recipe(kth, shuffled, progress=False, partitions=2)


def test_missing_difficulty_error_names_the_same_row(tmp_path):
    # HH-RLHF pairs have no scores: the curriculum raises, naming the same row in both modes
    body = (f"name: hh\nsource: {{path: {ROOT / 'examples/data/hh_rlhf_harmless_base_test_first1000.jsonl'}, "
            "format: hh-rlhf}\nsteps:\n  - filter: {}\n  - curriculum: {stages: 3}\n")
    r = _recipe(tmp_path, body)
    errors = []
    for parts in (1, 3):
        with pytest.raises(SchemaError, match=r"margin is null in \d+ row") as e:
            run_recipe(r, Catalog.open(tmp_path / f"c{parts}"), progress=False, partitions=parts)
        errors.append((str(e.value), e.value.row))
        assert Catalog.open(tmp_path / f"c{parts}").names() == []
    assert errors[0] == errors[1]
    dropped = _recipe(tmp_path, body.replace("{stages: 3}", "{stages: 3, missing: drop}"), "d.yaml")
    a = run_recipe(dropped, Catalog.open(tmp_path / "d1"), progress=False, partitions=1)
    b = run_recipe(dropped, Catalog.open(tmp_path / "d3"), progress=False, partitions=3)
    assert _acct(a) == _acct(b) and a.content_hash == b.content_hash and a.rows == 0
