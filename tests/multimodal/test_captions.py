"""DCPO perturbations: exact op rates, level ordering on real captions, accounted unchanged captions."""
from __future__ import annotations

from collections import Counter

import numpy as np
import polars as pl

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
