"""An identical rebuild is detected against every version built from the same recipe and inputs, not only the
latest: after a reference pass wrote @2 on top of the build @1, rebuilding the default recipe returns @1 and
writes nothing; a changed recipe still writes a new version."""
from __future__ import annotations

import io

import pyarrow as pa
from rich.console import Console

from catalog import Catalog
from prefdata.build import DEFAULT_RECIPE, run_recipe


def test_rebuild_matches_an_older_version(tmp_path):
    cat = Catalog.open(tmp_path / "cat")
    first = run_recipe(None, cat, progress=False)
    assert (first.version, first.written) == (1, True)
    # what a reference pass does: a new version of the same dataset with extra columns
    table = cat.read("arena-curry", 1)
    table = table.append_column("ref_logp_chosen", pa.array([0.0] * table.num_rows))
    v2 = cat.write("arena-curry", table, message="reference log-probs", lineage={"builder": "reference_pass",
                                                                                  "inputs": ["arena-curry@1"]})
    assert v2 == 2
    out = io.StringIO()
    again = run_recipe(None, cat, progress=True, console=Console(file=out, width=300))
    assert (again.version, again.written, again.content_hash) == (1, False, first.content_hash)
    assert [v["version"] for v in cat.versions("arena-curry")] == [1, 2]
    assert "  unchanged: identical to arena-curry@1  (2,328 pairs rows" in out.getvalue()
    # a different recipe (another min_margin) is a new build
    changed = tmp_path / "changed.yaml"
    changed.write_text(DEFAULT_RECIPE.read_text().replace("min_margin: 1", "min_margin: 2")
                       .replace("../data/", str(DEFAULT_RECIPE.parent.parent / "data") + "/"))
    assert run_recipe(changed, cat, progress=False).version == 3


def test_recipes_reading_the_same_file_share_one_ingested_source(tmp_path):
    cat = Catalog.open(tmp_path / "cat")
    run_recipe(None, cat, progress=False)
    bvw = DEFAULT_RECIPE.parent / "arena_best_vs_worst.yaml"
    res = run_recipe(bvw, cat, progress=False)
    assert res.inputs == ["arena-curry-source@1"] and not res.source_version_written
    assert cat.names() == ["arena-best-vs-worst", "arena-curry", "arena-curry-source"]
    again = run_recipe(bvw, cat, progress=False)
    assert (again.version, again.written, again.inputs) == (1, False, ["arena-curry-source@1"])
