"""Parse-time recipe validation: one-line RecipeError naming the YAML path, before any model is loaded."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from training_kit import recipe_error

from training.recipe import load_train_recipe


@pytest.fixture()
def files(tmp_path, hh_pairs, arena_lists):
    pairs = tmp_path / "pairs.parquet"
    pq.write_table(hh_pairs.slice(0, 4), pairs)
    lists = tmp_path / "lists.parquet"
    pq.write_table(arena_lists.slice(0, 4), lists)
    withref = tmp_path / "withref.parquet"
    t = hh_pairs.slice(0, 4)
    t = t.append_column("ref_logp_chosen", pa.array([-1.0] * 4)).append_column("ref_logp_rejected", pa.array([-2.0] * 4))
    pq.write_table(t, withref)
    return {"pairs": pairs, "lists": lists, "withref": withref}


def _recipe(tmp_path: Path, **over) -> Path:
    r = {"model": "some/model", "dataset": "x.parquet", "loss": {"name": "dpo_sigmoid", "beta": 0.1},
         "output_dir": str(tmp_path / "out"), "reference": {"model": "some/model"}}
    r.update(over)
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(r))
    return p


_err = recipe_error


def test_valid_recipe_parses(tmp_path, files):
    r = load_train_recipe(_recipe(tmp_path, dataset=str(files["pairs"])))
    assert r.train.batch_size == 8 and r.loss["beta"] == 0.1 and len(r.config_hash()) == 64


@pytest.mark.parametrize("over, path, words", [
    ({"loss": {"name": "dpo_sigmod"}}, "loss.name", "dpo_sigmoid"),          # unknown loss, close match offered
    ({"loss": {"name": "dpo_sigmoid", "beta": -1}}, "loss.beta", "> 0"),     # bad hyperparameter
    ({"loss": {"name": "dpo_sigmoid", "betta": 1}}, "loss.betta", "unknown"),
    ({"train": {"batch_size": 0}}, "train.batch_size", "greater than or equal"),
    ({"train": {"lr": 1e-5, "epoch": 2}}, "train.epoch", "unknown key"),
    ({"curriculum": {"mode": "sometimes"}}, "curriculum.mode", "off"),
    ({"train": {"master_weights": "fp8"}}, "train.master_weights", "'bf16'"),
    ({"train": {"master_weights": "bf16", "mixed_precision": "fp16"}}, "train", "mixed_precision bf16"),
])
def test_bad_recipe_values(tmp_path, files, over, path, words):
    e = _err(_recipe(tmp_path, dataset=str(files["pairs"]), **over))
    assert e.path == path and words in str(e)


def test_listwise_loss_on_pairs_table(tmp_path, files):
    e = _err(_recipe(tmp_path, dataset=str(files["pairs"]), loss={"name": "plackett_luce_dpo"}))
    assert e.path == "loss.name" and "lists table" in str(e)


def test_pair_loss_on_lists_table(tmp_path, files):
    e = _err(_recipe(tmp_path, dataset=str(files["lists"])))
    assert e.path == "loss.name" and "pairs table" in str(e)


def test_reference_defaults_to_the_starting_policy(tmp_path, files):
    from training.recipe import reference_model
    # no reference section and no ref columns: the reference pass runs the starting policy (TRL's convention)
    r = load_train_recipe(_recipe(tmp_path, dataset=str(files["pairs"]), reference={}))
    assert reference_model(r, ["prompt", "chosen", "rejected"]) == "some/model"
    # the dataset's own columns, reference-free, or a reference-free loss: no reference pass
    r = load_train_recipe(_recipe(tmp_path, dataset=str(files["withref"]), reference={}))
    assert reference_model(r, ["prompt", "chosen", "rejected", "ref_logp_chosen", "ref_logp_rejected"]) is None
    load_train_recipe(_recipe(tmp_path, dataset=str(files["pairs"]), reference={"free": True}))
    load_train_recipe(_recipe(tmp_path, dataset=str(files["pairs"]), reference={}, loss={"name": "simpo"}))


def test_modpo_needs_other_scores(tmp_path, files):
    e = _err(_recipe(tmp_path, dataset=str(files["pairs"]), loss={"name": "modpo", "w_k": 0.6, "w_other": [0.4]}))
    assert e.path == "dataset" and "scores_chosen" in str(e)


def test_missing_dataset_and_unsupported_kinds(tmp_path, files):
    e = _err(_recipe(tmp_path, dataset=str(tmp_path / "nope.parquet")))
    assert e.path == "dataset"
    # TDPO: an online reference (a model kept beside the policy, or LoRA adapters off) is required
    e = _err(_recipe(tmp_path, dataset=str(files["pairs"]), loss={"name": "tdpo1"}, reference={}))
    assert e.path == "reference.model" and "sequential KL" in str(e)
    e = _err(_recipe(tmp_path, dataset=str(files["pairs"]), loss={"name": "tdpo2"}, reference={"free": True}))
    assert e.path == "reference.free"
    e = _err(_recipe(tmp_path, dataset=str(files["pairs"]), loss={"name": "tdpo1"},
                     curriculum={"mode": "iterative"}))
    assert e.path == "curriculum.mode" and "online reference" in str(e)
    assert load_train_recipe(_recipe(tmp_path, dataset=str(files["pairs"]), loss={"name": "tdpo1"}, reference={},
                                     lora={"r": 4})).loss["name"] == "tdpo1"    # no ref columns needed either
    e = _err(_recipe(tmp_path, dataset=str(files["pairs"]), loss={"name": "diffusion_dpo"}))
    assert e.path == "loss.name"
    e = _err(_recipe(tmp_path, dataset=str(files["pairs"]), curriculum={"mode": "iterative"}, reference={"free": True}))
    assert e.path == "curriculum.mode"


def test_bundled_training_recipes_parse():
    """Every bundled training recipe is valid (the dataset is built by its build recipe, so not opened here)."""
    from training.vlm_recipe import is_vlm_recipe, load_vlm_recipe
    root = Path(__file__).resolve().parents[2] / "examples" / "recipes"
    found = {p.name: p for p in root.glob("*.yaml") if p.name.startswith("train_") or is_vlm_recipe(p)}
    assert {"train_tiny.yaml", "train_curry.yaml", "train_listwise.yaml", "train_kto.yaml", "train_tdpo.yaml",
            "mm_vlm_train.yaml"} <= set(found)
    import yaml

    from training.diffusion import load_diffusion_recipe
    for p in found.values():
        if "denoiser" in (yaml.safe_load(p.read_text()) or {}):   # diffusion recipes: their own parser
            assert str(load_diffusion_recipe(p).output_dir).startswith("runs/")
            continue
        r = (load_vlm_recipe if is_vlm_recipe(p) else load_train_recipe)(p, check_data=False)
        assert r.output_dir.startswith("runs/")
