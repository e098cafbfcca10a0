from pathlib import Path

import pytest

from prefdata.errors import RecipeError
from prefdata.recipe import canonical_config, load_recipe, parse_recipe

RECIPES = Path(__file__).resolve().parents[2] / "examples" / "recipes"
ARENA = str(RECIPES.parent / "data" / "arena_bench_v1_7way_scored.jsonl")


def write(tmp_path: Path, text: str, name: str = "x.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def recipe(steps: str, source: str = f"{{path: {ARENA}, format: arena}}") -> str:
    return f"name: t\nsource: {source}\nsteps:\n{steps}"


def test_default_recipe_parses_with_kinds():
    r = load_recipe(RECIPES / "default.yaml")
    assert r.name == "arena-curry"
    assert [s.name for s in r.steps] == ["rank", "pairs", "curriculum"]
    assert r.kinds == ("responses", "pairs", "pairs")
    assert r.source_path == (RECIPES.parent / "data" / "arena_bench_v1_7way_scored.jsonl").resolve()
    assert r.steps[1].config.min_margin == 1.0


def test_every_bundled_build_recipe_parses():
    builds = [p for p in RECIPES.glob("*.yaml") if not p.name.startswith(("train_", "synth_", "mm_", "eval_", "iterate_"))]
    assert len(builds) >= 8
    for p in builds:
        assert load_recipe(p).steps


@pytest.mark.parametrize("steps, message", [
    ("  - rank: {}\n  - pairs: {min_margin: abc}\n",
     "x.yaml: steps[1].pairs.min_margin: Input should be a valid number"),
    ("  - rank: {}\n  - pairs: {min_marign: 1}\n", "x.yaml: steps[1].pairs.min_marign: unknown field"),
    ("  - rank: {}\n  - pair: {}\n", "x.yaml: steps[1].pair: unknown step 'pair'; known steps: "),
    ("  - curriculum: {stages: 3}\n",
     "x.yaml: steps[0].curriculum: step 'curriculum' takes pairs, but its input is responses"),
    ("  - rank: {}\n  - lists: {k: 4}\n  - pairs: {}\n",
     "x.yaml: steps[2].pairs: step 'pairs' takes responses, but its input is lists"),
    ("  - rank: {aggregate: weighted_mean}\n", "x.yaml: steps[0].rank: Value error, aggregate weighted_mean needs"),
    ("  - rank: {}\n  - pairs: {strategy: all_pairs, max_pairs_per_prompt: 0}\n",
     "x.yaml: steps[1].pairs.max_pairs_per_prompt: Input should be greater than or equal to 1"),
    ("  - rank: [score]\n", "x.yaml: steps[0].rank: config must be a mapping"),
    ("  - {rank: {}, pairs: {}}\n", "x.yaml: steps[0]: each step is a single-key mapping"),
])
def test_step_errors_name_file_and_yaml_path(tmp_path, steps, message):
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, recipe(steps)))
    # the whole message: file, YAML path, what is wrong
    assert str(e.value).startswith(f"{tmp_path}/{message}")


def test_unknown_step_lists_the_known_ones(tmp_path):
    with pytest.raises(RecipeError, match=r"known steps: .*curriculum.*dedup.*filter.*lists.*pairs.*rank"):
        load_recipe(write(tmp_path, recipe("  - pair: {}\n")))


@pytest.mark.parametrize("text, message", [
    ("name: t\nsource: {dataset: a, path: b}\nsteps: [rank]\n", "source: give exactly one of"),
    ("name: t\nsource: {path: nowhere.jsonl}\nsteps: [rank]\n", "source.path: source file not found"),
    ("name: t\nsource: {dataset: a, format: arena}\nsteps: [rank]\n", "source: format/mapping only apply"),
    ("name: t\nsource: {dataset: a, sheet: 2}\nsteps: [rank]\n", "source.sheet: unknown field"),
    ("name: t\nsource: {dataset: a}\nsteps: []\n", "steps: steps must be a non-empty list"),
    ("name: t\nsource: {dataset: a}\n", "steps: missing (required)"),
    ("name: bad name\nsource: {dataset: a}\nsteps: [rank]\n", "name: 'bad name' is not a valid dataset name"),
    ("name: t\nseed: x\nsource: {dataset: a}\nsteps: [rank]\n", "seed: seed must be an integer"),
    ("name: t\nsorce: {dataset: a}\nsteps: [rank]\n", "sorce: unknown key"),
    ("name: t\nsource: {dataset: a\nsteps: [rank]\n", "invalid YAML: line"),
    ("- just a list\n", "a recipe is a mapping"),
])
def test_top_level_errors(tmp_path, text, message):
    with pytest.raises(RecipeError, match="^" + str(tmp_path / "x.yaml") + ": ") as e:
        load_recipe(write(tmp_path, text))
    assert message in str(e.value)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_canonical_config_includes_defaults_and_changes_with_config(tmp_path):
    a = parse_recipe({"name": "t", "source": {"dataset": "d"}, "steps": [{"rank": {}}, {"pairs": {}}]})
    b = parse_recipe({"name": "t", "source": {"dataset": "d"},
                      "steps": [{"rank": {"by": "score"}}, {"pairs": {"strategy": "all_pairs", "min_margin": 0}}]})
    c = parse_recipe({"name": "t", "source": {"dataset": "d"}, "steps": [{"rank": {}}, {"pairs": {"min_margin": 1}}]})
    text, sha = canonical_config(a)
    assert canonical_config(b) == (text, sha)
    assert canonical_config(c)[1] != sha
    assert '"min_margin":0.0' in text and len(sha) == 64
