"""Mixture recipes end to end (run_recipe into a Lance catalog on disk): exact per-source counts, per-source
accounting in lineage, the `source` column in every output kind, split by source, and recipe errors.

Source A (responses, 6 prompts, all taken): a0 scores 3, 2, null · a1 2, 2, 2 (all tied) · a2, a3 3, 2, 1 with
the best 3x as long as the worst · a4, a5 3, 2, 1 with the best 1.5x as long. Source B (TRL pairs, 10 prompts,
unpaired): chosen 10 characters, rejected 15. Weights 1:1 -> T = min(6 * 2 / 1, 10 * 2 / 1) = 12: A 6, B 6."""
import json
from pathlib import Path

import polars as pl
import pytest

from catalog import Catalog
from prefdata.build import run_recipe
from prefdata.errors import RecipeError
from prefdata.recipe import canonical_config, load_recipe

ROOT = Path(__file__).resolve().parents[2]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("mixdata")
    a = []
    shapes = {"a0": [(3, 20), (2, 20), (None, 20)], "a1": [(2, 10), (2, 11), (2, 12)],
              "a2": [(3, 30), (2, 20), (1, 10)], "a3": [(3, 30), (2, 20), (1, 10)],
              "a4": [(3, 15), (2, 12), (1, 10)], "a5": [(3, 15), (2, 12), (1, 10)]}
    for pid, rs in shapes.items():
        for i, (score, n) in enumerate(rs):
            a.append({"q": f"question {pid}", "answer": (f"{pid}{i}" * 10)[:n], "rating": score})
    _write_jsonl(d / "a.jsonl", a)
    _write_jsonl(d / "b.jsonl", [{"prompt": f"prompt b{i}", "chosen": f"good {i:05d}", "rejected": f"bad reply {i:05d}"}
                                 for i in range(10)])
    return d


def recipe(d: Path, steps: str, name: str = "mixed", extra: str = "") -> Path:
    p = d / f"{name}.yaml"
    p.write_text(f"""name: {name}
sources:
  - {{name: A, path: a.jsonl, mapping: {{prompt: q, response: answer, score: rating}}, weight: 1}}
  - {{name: B, path: b.jsonl, format: trl, unpair: true, weight: 1{extra}}}
steps:
{steps}
""")
    return p


STEPS = """  - rank: {by: score}
  - pairs: {strategy: best_vs_worst, length_balance: {max_ratio: 2}}
  - split: {test: 2, stratify_by: source}"""


@pytest.fixture(scope="module")
def built(data, tmp_path_factory):
    cat = Catalog.open(tmp_path_factory.mktemp("cat"))
    return cat, run_recipe(recipe(data, STEPS), cat, progress=False)


def test_exact_counts_per_source(built):
    cat, res = built
    mix, rank, pairs, split = res.steps
    assert (mix.step, mix.rows_in, mix.rows_kept, mix.drops) == ("mix", 38, 30, {"not chosen (weight)": 8})
    assert mix.info["weighted_total_prompts"] == 12
    assert {n: (t["prompts_kept"], t["rows_kept"]) for n, t in mix.info["sources"].items()} == {"A": (6, 18),
                                                                                                 "B": (6, 12)}
    assert mix.info["unpaired"] == {"B": {"pairs": 10, "scored_1_0": 10}}
    assert rank.by_source == {"A": {"rows_in": 18, "rows_kept": 17, "drops": {"score is null": 1}},
                              "B": {"rows_in": 12, "rows_kept": 12, "drops": {}}}
    assert pairs.drops == {"chosen/rejected length ratio above max_ratio": 4, "not selected (best_vs_worst)": 4,
                           "tied with every other response": 3}
    assert pairs.by_source["B"] == {"rows_in": 12, "rows_kept": 12, "drops": {}}
    assert pairs.by_source["A"]["rows_kept"] == 6 and pairs.info["pairs"] == 9
    df = pl.from_arrow(cat.read("mixed"))
    assert df.group_by("source").len().sort("source").rows() == [("A", 3), ("B", 6)]
    # 9 prompts with pairs, test 2 stratified: A 2*3/9 = 0.67, B 1.33 -> floors 0, 1, the last to A (.67 > .33)
    assert df.filter(pl.col("split") == "test").group_by("source").len().sort("source").rows() == [("A", 1), ("B", 1)]
    assert split.info["strata"]["A"]["test"]["prompts"] == 1


def test_lineage_accounts_every_drop_by_source(built):
    cat, res = built
    lin = cat.lineage("mixed", res.version)
    assert lin["inputs"] == ["mixed-A-source@1", "mixed-B-source@1"]
    assert (lin["rows_in"], lin["rows_kept"]) == (38, 18)
    src = lin["sources"]
    assert src["A"]["rows_dropped"] == {"rank: score is null": 1,
                                        "pairs: chosen/rejected length ratio above max_ratio": 4,
                                        "pairs: not selected (best_vs_worst)": 4,
                                        "pairs: tied with every other response": 3}
    assert src["B"]["rows_dropped"] == {"mix: not chosen (weight)": 8}
    assert (src["A"]["rows_in"], src["A"]["rows_kept"], src["B"]["rows_in"], src["B"]["rows_kept"]) == (18, 6, 20, 12)
    # every drop of the build is in exactly one source
    per_source = {}
    for s in src.values():
        for k, n in s["rows_dropped"].items():
            per_source[k] = per_source.get(k, 0) + n
    assert per_source == lin["rows_dropped"]
    assert src["A"]["input"] == "mixed-A-source@1" and src["B"]["mix"]["weight"] == 1.0
    assert [s["step"] for s in lin["steps"]] == ["mix", "rank", "pairs", "split"]
    # length bias of the output, in characters: A 1 equal + 2 longer (1.5), B 6 shorter (10/15)
    assert lin["length_bias"] == {"unit": "characters", "pairs": 9, "chosen_longer": 2, "chosen_shorter": 6,
                                  "equal_length": 1, "length_ratio_pairs": 9, "chosen_longer_share": 0.222222,
                                  "mean_length_ratio": 0.888889}
    assert res.length_bias == lin["length_bias"]


def test_source_column_in_every_output_kind(data, tmp_path):
    cat = Catalog.open(tmp_path / "cat")
    for steps, kind in (("  - rank: {by: score}", "responses"), ("  - rank: {by: score}\n  - lists: {}", "lists"),
                        ("  - pairs: {}\n  - curriculum: {stages: 2, by: margin}", "pairs")):
        res = run_recipe(recipe(data, steps, name=f"kind-{kind}"), cat, progress=False)
        df = pl.from_arrow(cat.read(res.name))
        assert res.kind == kind and "source" in df.columns and set(df["source"]) == {"A", "B"}
        pid = "prompt_id"
        assert df.group_by(pid).agg(pl.col("source").n_unique())["source"].max() == 1


def test_partitioned_equals_in_memory(data, tmp_path, built):
    _, whole = built
    cat = Catalog.open(tmp_path / "cat")
    part = run_recipe(recipe(data, STEPS), cat, progress=False, partitions=3)
    assert part.content_hash == whole.content_hash
    assert part.lineage["sources"] == whole.lineage["sources"]
    assert [r.by_source for r in part.steps] == [r.by_source for r in whole.steps]
    # balance_longer looks at every prompt: it cannot run by partitions
    p = recipe(data, "  - rank: {by: score}\n  - pairs: {balance_longer: true}", name="bal")
    with pytest.raises(RecipeError, match=r"steps\[1\]\.pairs.*needs the whole table"):
        run_recipe(p, cat, progress=False, partitions=2)


def test_caps_and_identical_rebuild(data, tmp_path):
    cat = Catalog.open(tmp_path / "cat")
    p = recipe(data, "  - rank: {by: score}", name="capped", extra=", max_prompts: 4")
    res = run_recipe(p, cat, progress=False)
    # B available 4 -> T = min(12, 8) = 8: A 4, B 4
    t = res.steps[0].info["sources"]
    assert (t["A"]["prompts_kept"], t["B"]["prompts_kept"], res.steps[0].info["weighted_total_prompts"]) == (4, 4, 8)
    assert t["B"]["prompt_drops"] == {"not chosen (max_prompts)": 6}
    assert t["A"]["prompt_drops"] == {"not chosen (weight)": 2}
    again = run_recipe(p, cat, progress=False)
    assert not again.written and again.version == res.version


def test_catalog_dataset_entries(data, tmp_path):
    from prefdata.ingest import ingest_to_catalog

    cat = Catalog.open(tmp_path / "cat")
    ingest_to_catalog(cat, data / "a.jsonl", name="a-in", mapping={"prompt": "q", "response": "answer",
                                                                  "score": "rating"})
    ingest_to_catalog(cat, data / "b.jsonl", format="trl", name="b-in")
    p = data / "from_catalog.yaml"
    p.write_text("name: dsmix\nsources:\n  - {name: A, dataset: a-in, weight: 1}\n"
                 "  - {name: B, dataset: b-in@1, unpair: true, weight: 1}\nsteps: [rank: {by: score}]\n")
    res = run_recipe(p, cat, progress=False)
    assert res.inputs == ["a-in@1", "b-in@1"] and not res.source_version_written
    t = res.steps[0].info["sources"]
    assert (t["A"]["prompts_kept"], t["B"]["prompts_kept"], t["B"]["rows_in"]) == (6, 6, 20)
    assert "dsmix-A-source" not in cat.names()


def test_config_hash_of_single_source_recipes_unchanged():
    # the new recipe keys and pairs options leave every earlier recipe's canonical config as it was
    text, sha = canonical_config(load_recipe(ROOT / "examples" / "recipes" / "default.yaml"))
    assert sha == "6a0d254862243d1b3d8d94d83be10cc7a5c53f4a7d8d30bdff12b22ac4f98ed8"
    assert '"source":{"format":"arena"' in text and "sources" not in text and "balance_longer" not in text


@pytest.mark.parametrize("body, where", [
    ("source: {path: a.jsonl}\nsources: []", "sources: give source: (one source) or sources: (a mixture)"),
    ("sources: []", "sources: sources must be a non-empty list"),
    ("sources: [{path: a.jsonl, weight: 1}]", "sources[0].name: Field required"),
    ("sources: [{name: A, path: a.jsonl, weight: -1}]", "sources[0].weight: Input should be greater than 0"),
    ("sources: [{name: A, path: a.jsonl, max_rows: 0}]", "sources[0].max_rows: Input should be greater than"),
    ("sources: [{name: A, path: a.jsonl, colour: red}]", "sources[0].colour: unknown field"),
    ("sources: [{name: 'a b', path: a.jsonl}]", "sources[0].name: Value error, 'a b' is not a valid source name"),
    ("sources: [{name: A, path: a.jsonl}, {name: A, path: b.jsonl}]",
     "sources[1].name: duplicate source name 'A' (also sources[0].name)"),
    ("sources: [{name: A, path: a.jsonl, dataset: x}]", "sources[0]: give exactly one of dataset"),
    ("sources: [{name: A, path: missing.jsonl}]", "sources[0].path: source file not found"),
    ("sources: [{name: A, path: a.jsonl, format: arena}, {name: B, path: b.jsonl, format: hh-rlhf}]",
     "sources[1]: this source gives pairs but sources[0] gives responses"),
    ("sources: [{name: A, path: a.jsonl, format: arena, unpair: true}]", "sources[0].unpair: unpair takes a pairs"),
])
def test_recipe_errors_name_the_yaml_path(data, body, where):
    p = data / "bad.yaml"
    p.write_text(f"name: bad\n{body}\nsteps: [rank: {{by: score}}]\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    assert f"bad.yaml: {where}" in str(e.value)


def test_kind_mismatch_found_at_build_time(data, tmp_path):
    # TRL files decide their kind by content: a pairs file beside a responses one, not unpaired
    p = data / "mismatch.yaml"
    p.write_text("""name: mismatch
sources:
  - {name: A, path: a.jsonl, mapping: {prompt: q, response: answer, score: rating}}
  - {name: B, path: b.jsonl, format: trl}
steps: [rank: {by: score}]
""")
    with pytest.raises(RecipeError, match=r"mismatch.yaml: sources\[1\]: this source gives pairs but sources\[0\]"):
        run_recipe(p, Catalog.open(tmp_path / "cat"), progress=False)
