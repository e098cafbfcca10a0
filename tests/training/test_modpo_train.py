"""MODPO end to end: score (labelled objective moved out of `scores`) -> pairs -> the trainer's
other_chosen/other_rejected -> training steps whose loss equals the spec's formula (§1.13) on that batch.
Also: a null other reward is an accounted drop for MODPO and no obstacle for any other loss."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file

from builders.base import StepContext
from builders.pairs import PairsConfig, build_pairs
from builders.score import ScoreConfig, build_score
from prefdata.errors import SchemaError
from prefdata.schema import validate
from training.data import DataOptions, build_train_data
from training.reference import compute_reference
from training.run import load_model, train_from_recipe

DATA = Path(__file__).resolve().parents[1] / "data" / "training"
BETA, W_K, W_OTHER = 0.5, 0.6, 0.4


def _pairs(n_prompts: int) -> pa.Table:
    """Real responses (arena lists, the shortest prompts): the labelled objective is brevity, the other one is
    whether the response contains a digit."""
    lists = pq.read_table(DATA / "arena_lists.parquet").to_pylist()
    lists = sorted(lists, key=lambda r: len(r["prompt"]) + sum(len(x) for x in r["responses"]))[:n_prompts]
    rows = [{"prompt_id": f"p{i}", "prompt": r["prompt"], "response_id": f"p{i}-{k}", "response": resp}
            for i, r in enumerate(lists) for k, resp in enumerate(r["responses"][:3])]
    cfg = ScoreConfig.model_validate({"scorers": [
        {"kind": "rules", "name": "short", "rule": "length", "unit": "words", "max": 60},
        {"kind": "rules", "name": "digits", "rule": "regex", "pattern": r"\d"}],
        "set_score": "short", "move_set_score": True})
    ctx = StepContext(progress=False)
    scored = build_score(pl.LazyFrame(rows), cfg, ctx).frame
    pairs = build_pairs(scored, PairsConfig(strategy="best_vs_worst"), ctx).frame.collect().to_arrow()
    validate(pairs, "pairs")
    return pairs


def _with_null_digit(pairs: pa.Table, row: int) -> pa.Table:
    """Row `row`'s scores_chosen.digits set null (a score kept with `on_unscorable: keep`)."""
    vals = pairs.column("scores_chosen").to_pylist()
    vals[row] = {"digits": None}
    return pairs.set_column(pairs.column_names.index("scores_chosen"), "scores_chosen",
                            pa.array(vals, pairs.schema.field("scores_chosen").type))


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    pairs = _pairs(10)
    d = pairs.column("scores_chosen").to_pylist(), pairs.column("scores_rejected").to_pylist()
    dr = [c["digits"] - r["digits"] for c, r in zip(*d, strict=True)]
    assert set(dr) >= {0.0} and any(x != 0 for x in dr)   # the other objective moves some pairs
    path = tmp_path_factory.mktemp("modpo") / "pairs.parquet"
    pq.write_table(_with_null_digit(pairs, 0), path)
    return path


def test_null_other_reward_is_dropped_for_modpo_only(pairs_file, tokenizer):
    table = pq.read_table(pairs_file)
    plain = build_train_data(table, tokenizer, max_length=4096)   # DPO & co. never read scores_*
    assert "other_chosen" not in plain.columns and len(plain.groups) == table.num_rows
    modpo = build_train_data(table, tokenizer, max_length=4096, options=DataOptions(other_rewards=True))
    assert modpo.dropped == {"scores_chosen.digits is null": 1} and 0 not in modpo.rows
    want = [[table["scores_chosen"][r].as_py()["digits"]] for r in modpo.rows]
    assert modpo.columns["other_chosen"].tolist() == want


def test_bad_other_reward_columns(pairs_file, tokenizer):
    table = pq.read_table(pairs_file)
    flat = table.set_column(table.column_names.index("scores_rejected"), "scores_rejected",
                            pa.array([1.0] * table.num_rows))
    with pytest.raises(SchemaError, match="struct columns") as e:
        build_train_data(flat, tokenizer, max_length=4096, options=DataOptions(other_rewards=True))
    assert e.value.column == "scores_rejected"
    other = table.set_column(table.column_names.index("scores_rejected"), "scores_rejected",
                             pa.array([{"help": 1.0}] * table.num_rows))
    with pytest.raises(SchemaError, match=r"fields \['digits'\] differ"):
        build_train_data(other, tokenizer, max_length=4096, options=DataOptions(other_rewards=True))


def test_modpo_trains_with_the_spec_formula(tmp_path, tiny_model_dir, pairs_file):
    table = pq.read_table(pairs_file)
    n = table.num_rows - 1   # the null row is dropped
    recipe = tmp_path / "modpo.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": str(tiny_model_dir), "dataset": str(pairs_file), "output_dir": str(tmp_path / "run"),
        "loss": {"name": "modpo", "beta": BETA, "w_k": W_K, "w_other": [W_OTHER]},
        "reference": {"model": str(tiny_model_dir)},
        "train": {"batch_size": n, "max_length": 4096, "lr": 2e-2, "warmup_ratio": 0.0, "seed": 0, "max_steps": 2,
                  "save_every": 1}}))
    res = train_from_recipe(recipe)
    assert res["rows_trained"] == n and res["rows_dropped"] == {"scores_chosen.digits is null": 1}
    m = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]

    ref = pq.read_table(next((tmp_path / "run" / "reference").glob("*.parquet")))
    keep = list(range(1, table.num_rows))
    dr = np.array([table["scores_chosen"][i].as_py()["digits"] - table["scores_rejected"][i].as_py()["digits"]
                   for i in keep])
    ref_w = np.array([ref["ref_logp_chosen"][i].as_py() for i in keep])
    ref_l = np.array([ref["ref_logp_rejected"][i].as_py() for i in keep])

    def spec_loss(pol_w, pol_l):   # L = -log s((beta/w_k) h - (1/w_k) w_other dr), mean over the batch
        z = BETA / W_K * ((pol_w - ref_w) - (pol_l - ref_l)) - W_OTHER * dr / W_K
        return float(np.mean(np.logaddexp(0.0, -z)))

    # step 1: policy == reference, h = 0; only the other objective's shift moves the loss off ln 2
    assert m[0]["loss"] == pytest.approx(spec_loss(ref_w, ref_l), abs=1e-6)
    assert abs(m[0]["loss"] - math.log(2)) > 1e-3
    # step 2: the policy after step 1 (its checkpoint), run over the same rows
    lm, tok = load_model(str(tiny_model_dir), trust_remote_code=False)
    state = load_file(tmp_path / "run" / "checkpoints" / "step-000001" / "model.safetensors")
    lm.load_state_dict({k.removeprefix("lm."): v for k, v in state.items()})
    pol = compute_reference(lm, tok, table, max_length=4096, device="cpu", layout=res["layout"])
    pol_w = np.array([pol["ref_logp_chosen"][i].as_py() for i in keep])
    pol_l = np.array([pol["ref_logp_rejected"][i].as_py() for i in keep])
    assert not np.allclose(pol_w, ref_w)
    assert m[1]["loss"] == pytest.approx(spec_loss(pol_w, pol_l), abs=1e-5)
    assert torch.isfinite(torch.tensor([x["loss"] for x in m])).all()
