"""End-to-end: recipes on the bundled real data into a catalog on disk (Lance), through run_recipe."""
import importlib.util
from pathlib import Path

import polars as pl
import pytest

from builders.base import Built
from builders.pairs import PairsConfig
from builders.registry import STEPS
from catalog import Catalog
from prefdata.build import AccountingError, run_recipe, run_step
from prefdata.errors import RecipeError, SchemaError
from prefdata.recipe import RecipeStep

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "data"


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.fixture(scope="module")
def default_build(tmp_path_factory):
    cat = Catalog.open(tmp_path_factory.mktemp("cat"))
    return cat, run_recipe(None, cat, progress=False)


def test_default_build_exact_counts(default_build):
    cat, res = default_build
    assert (res.name, res.version, res.kind, res.rows) == ("arena-curry", 1, "pairs", 2328)
    assert res.inputs == ["arena-curry-source@1"] and res.source_version_written
    rank, pairs, cur = res.steps
    assert (rank.rows_in, rank.rows_kept, rank.drops, rank.rows_out) == (1400, 1390, {"score is null": 10}, 1390)
    assert (pairs.rows_in, pairs.rows_kept, pairs.rows_out) == (1390, 1325, 2328)
    assert pairs.drops == {"below min_margin": 51, "tied with every other response": 14}
    assert pairs.info["prompts_all_tied"] == 2 and pairs.info["prompts_without_pair"] == 5
    assert cur.info["stage_sizes"] == [819, 683, 826]
    table = cat.read("arena-curry")
    assert table.num_rows == 2328 and cat.read("arena-curry-source").num_rows == 1400
    df = pl.from_arrow(table)
    assert df["stage"].to_list() == sorted(df["stage"].to_list())
    assert (df["margin"] > 1).all() and df.filter(pl.col("stage") == 0)["margin"].min() == 7.0
    assert {"model_chosen", "model_rejected", "scores_chosen", "judgment_chosen"} <= set(df.columns)


def test_default_build_lineage(default_build):
    cat, res = default_build
    lin = cat.lineage("arena-curry", res.version)
    assert lin["recipe"] == "examples/recipes/default.yaml" and lin["builder"] == "recipe"
    assert lin["config_sha256"] == res.config_sha256 and lin["config"]["steps"][1]["pairs"]["min_margin"] == 1.0
    assert lin["inputs"] == ["arena-curry-source@1"]
    assert (lin["rows_in"], lin["rows_kept"]) == (1400, 1325)
    assert lin["rows_dropped"] == {"rank: score is null": 10, "pairs: below min_margin": 51,
                                   "pairs: tied with every other response": 14}
    assert [s["step"] for s in lin["steps"]] == ["rank", "pairs", "curriculum"]
    assert lin["steps"][2]["rows_out"] == 2328 and lin["content_hash"] == res.content_hash
    src = cat.lineage("arena-curry-source", 1)
    assert src["builder"] == "ingest" and src["rows_in"] == 1400


def test_rebuild_is_reproducible_and_not_rewritten(default_build, tmp_path):
    cat, first = default_build
    again = run_recipe(None, cat, progress=False)
    assert (again.version, again.written, again.source_version_written) == (1, False, False)
    assert again.content_hash == first.content_hash
    other = Catalog.open(tmp_path / "other")         # a fresh catalog: same rows, same hash
    fresh = run_recipe(ROOT / "examples" / "recipes" / "default.yaml", other, progress=False)
    assert fresh.content_hash == first.content_hash
    assert other.read("arena-curry").equals(cat.read("arena-curry"))


def test_build_from_a_catalog_dataset_and_tag(default_build, tmp_path):
    cat, _ = default_build
    cat.tag("arena-curry-source", 1, "raw")
    r = write(tmp_path, "name: arena-bvw\nsource: {dataset: arena-curry-source@raw}\nseed: 3\nsteps:\n"
                        "  - rank: {by: score}\n  - pairs: {strategy: best_vs_worst, min_margin: 1}\n")
    res = run_recipe(r, cat, progress=False)
    assert res.inputs == ["arena-curry-source@1"] and res.rows == 195
    assert cat.lineage("arena-bvw", res.version)["inputs"] == ["arena-curry-source@1"]


def test_run_time_kind_mismatch_with_a_dataset_source(default_build, tmp_path):
    cat, _ = default_build
    r = write(tmp_path, "name: bad\nsource: {dataset: arena-curry}\nsteps:\n  - rank: {}\n")
    with pytest.raises(RecipeError, match=r"steps\[0\]\.rank: step 'rank' takes responses, but its input is pairs"):
        run_recipe(r, cat, progress=False)
    assert "bad" not in cat.names()


def test_failed_build_leaves_no_version(tmp_path):
    cat = Catalog.open(tmp_path / "cat")
    r = write(tmp_path, f"name: hh-cur\nsource: {{path: {DATA / 'hh_rlhf_harmless_base_test_first1000.jsonl'}, "
                        "format: hh-rlhf}\nsteps:\n  - filter: {}\n  - curriculum: {stages: 3}\n")
    with pytest.raises(SchemaError, match=r"margin is null in \d+ row"):
        run_recipe(r, cat, progress=False)
    assert cat.names() == []                      # neither the source nor the result was stored


def test_hh_filter_recipe(tmp_path):
    cat = Catalog.open(tmp_path / "cat")
    res = run_recipe(ROOT / "examples" / "recipes" / "hh_rlhf_filter.yaml", cat, progress=False)
    (step,) = res.steps
    assert step.rows_in == 1000 and step.rows_kept + sum(step.drops.values()) == 1000
    assert res.rows == step.rows_kept and res.kind == "pairs"


def test_lists_recipe_output_is_lists(tmp_path):
    cat = Catalog.open(tmp_path / "cat")
    res = run_recipe(ROOT / "examples" / "recipes" / "arena_lists_top4.yaml", cat, progress=False)
    assert res.kind == "lists" and res.rows == 175
    assert all(len(x) == 4 for x in cat.read("arena-lists-top4").column("ranks").to_pylist())


def test_unknown_engine_and_missing_ray_engine(tmp_path):
    with pytest.raises(RecipeError, match="unknown engine 'spark'"):
        run_recipe(None, tmp_path / "cat", engine="spark", progress=False)
    if importlib.util.find_spec("prefdata.engine_ray") is None:
        with pytest.raises(RecipeError, match="engine 'ray' not available"):
            run_recipe(None, tmp_path / "cat", engine="ray", progress=False)


def _lying_step(frame, cfg, ctx):
    df = frame.collect()
    return Built(df.head(1).lazy(), "responses", drops={"made up": 1}, rows_in=df.height, rows_kept=1)


def test_accounting_violation_is_a_bug_not_silence():
    step = RecipeStep("pairs", PairsConfig(), STEPS["pairs"], _lying_step, "steps[0].pairs")
    frame = pl.DataFrame({"prompt_id": ["p"] * 3, "prompt": ["x"] * 3, "response_id": list("abc"),
                          "response": list("abc")}).lazy()
    with pytest.raises(AccountingError, match=r"steps\[0\]\.pairs: rows_in 3 != rows_kept 1 \+ dropped 1"):
        run_step(step, frame, "responses", None, lambda s, f, c: s.fn(f, s.config, c), file="t.yaml")


def test_pick_a_pic_file_source_stores_images_under_the_catalog(tmp_path):
    # the fixture holds image bytes (jpg_0/jpg_1): the build stores them in the catalog, URIs relative to it
    cat = Catalog.open(tmp_path / "cat")
    src = ROOT / "tests" / "data" / "pick_a_pic_sample.parquet"
    r = write(tmp_path, f"name: pap\nsource: {{path: {src}, format: pick-a-pic}}\nsteps:\n  - filter: {{}}\n")
    res = run_recipe(r, cat, progress=False)
    assert res.kind == "pairs" and res.rows == 2 and res.steps[0].rows_in == 2      # the tie row is dropped
    table = pl.from_arrow(cat.read("pap"))
    uris = table["chosen"].to_list() + table["rejected"].to_list() + table["images"].explode().to_list()
    assert len(uris) == 8 and all(u.startswith("media/") and (cat.root / u).is_file() for u in uris)
    assert cat.read("pap-source").num_rows == 2
