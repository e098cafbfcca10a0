"""The bundled hygiene recipe (examples/recipes/hygiene_mix.yaml) through the real CLI: arena + HH-RLHF mixed 1:2
by prompt, near-dedup, decontamination, length-balanced pairs, a split by cluster; its lineage accounts every
drop by step, reason and source, and `prefdata log` shows it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from catalog import Catalog

REPO = Path(__file__).resolve().parents[2]
RECIPE = "examples/recipes/hygiene_mix.yaml"
HB = "decontaminate: 13-gram overlap with hygiene-bench item hb-0"


def cli(catalog: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200")
    proc = subprocess.run([sys.executable, "-m", "prefdata", *args, "--catalog", str(catalog)], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    catalog = tmp_path_factory.mktemp("hyg") / "cat"
    out = cli(catalog, "build", RECIPE).stdout
    return catalog, out, Catalog.open(catalog).lineage("hygiene-mix")


def test_every_drop_by_reason_and_source(build):
    _, _, lin = build
    src = lin["sources"]
    assert set(src) == {"arena", "hh"}                   # nothing "(not attributed)"
    assert src["arena"]["mix"]["prompts_kept"] == 200 and src["hh"]["mix"]["prompts_kept"] == 400
    assert lin["steps"][0]["info"]["weighted_total_prompts"] == 600
    assert src["hh"]["rows_dropped"] == {
        "mix: not chosen (weight)": 1200,
        "near_dedup: near-duplicate of prompt d546196f550119f26e55100f3e6994c96152bb4123417370561569b8c0852474": 2,
        "pairs: chosen/rejected length ratio above max_ratio": 100}
    assert src["arena"]["rows_dropped"] == {
        **{f"{HB}{i}": 7 for i in ("03", "05", "08", "11", "13")},
        "rank: score is null": 10, "pairs: chosen/rejected length ratio above max_ratio": 48,
        "pairs: not selected (balance_longer)": 150, "pairs: tied with every other response": 7,
        "pairs: tied with its candidate partners": 162}
    # the sources' drops are the build's drops, each exactly once; rows in = kept + dropped per source and overall
    merged: dict[str, int] = {}
    for s in src.values():
        assert s["rows_in"] == s["rows_kept"] + sum(s["rows_dropped"].values())
        for k, n in s["rows_dropped"].items():
            merged[k] = merged.get(k, 0) + n
    assert merged == lin["rows_dropped"]
    assert (lin["rows_in"], lin["rows_kept"]) == (3400, 1686) == (3400, src["arena"]["rows_kept"] + src["hh"]["rows_kept"])
    # and every step's drops split by source add up to the step's drops
    for step in lin["steps"]:
        by = step["by_source"]
        total: dict[str, int] = {}
        for acc in by.values():
            for k, n in acc["drops"].items():
                total[k] = total.get(k, 0) + n
        assert total == {k: n for k, n in step["drops"].items() if n}, step["step"]
    assert [s["step"] for s in lin["steps"]] == ["mix", "near_dedup", "decontaminate", "near_dedup", "rank", "pairs",
                                                 "split"]


def test_output_balanced_split_by_cluster(build):
    catalog, out, lin = build
    df = pl.from_arrow(Catalog.open(catalog).read("hygiene-mix"))
    assert {"source", "cluster_id", "split"} <= set(df.columns)
    c, r = df["chosen"].str.len_chars(), df["rejected"].str.len_chars()
    assert int((c > r).sum()) == int((c < r).sum()) == 570            # balance_longer: as many each way
    assert (c / r).max() <= 3                                         # length_balance max_ratio
    assert lin["length_bias"]["chosen_longer"] == 570 and lin["length_bias"]["unit"] == "characters"
    # a cluster (and a prompt) is on one side of the split, and so is its source
    assert df.group_by("cluster_id").agg(pl.col("split").n_unique())["split"].max() == 1
    sides = df.group_by("source", "split").agg(pl.col("prompt_id").n_unique()).sort("source", "split").rows()
    assert [s[:2] for s in sides] == [("arena", "test"), ("arena", "train"), ("hh", "test"), ("hh", "train")]
    assert "length      chosen longer in 49.9 % of 1,143 pairs" in out


def test_log_shows_sources(build):
    catalog, _, _ = build
    text = cli(catalog, "log", "hygiene-mix").stdout
    assert "source arena      hygiene-mix-arena-source@1 (weight 1.0) · chose 200 of 200 prompts" in text
    assert "source hh         hygiene-mix-hh-source@1 (weight 2.0) · chose 400 of 1000 prompts" in text
    assert "      dropped 1200 mix: not chosen (weight), 2 near_dedup: near-duplicate of prompt d546196f" in text
    assert "      hh             in 2000 · kept 800 · dropped 1200 not chosen (weight)" in text
    assert "kept 698 of 2000 rows" in text
