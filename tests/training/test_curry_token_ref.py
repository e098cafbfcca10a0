"""Curry-DPO (`curriculum.mode: iterative`) with a loss that reads per-token reference log-probs: at each stage
start the per-token reference is refreshed too, and equals a fresh reference pass of that stage's starting
weights (read back from the checkpoint written at the stage boundary)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file

from training.data import PAIR_TOK_REF
from training.losses import LOSSES
from training.reference import compute_reference
from training.run import load_model, train_from_recipe

TOKEN_REF_LOSSES = sorted(n for n, s in LOSSES.items() if {"ref", "token_logps"} <= s.needs)
DATA = Path(__file__).resolve().parents[1] / "data" / "training" / "arena_pairs.parquet"


def test_some_loss_reads_per_token_reference():
    assert TOKEN_REF_LOSSES == ["ld_dpo"]  # a new one is picked up by the test below automatically


@pytest.mark.parametrize("loss", TOKEN_REF_LOSSES)
def test_iterative_refresh_rewrites_per_token_reference(tmp_path, tiny_model_dir, loss):
    arena = pq.read_table(DATA)
    stages = arena.column("stage").to_pylist()
    lens = [len(p) + len(c) + len(r) for p, c, r in zip(arena["prompt"].to_pylist(), arena["chosen"].to_pylist(),
                                                          arena["rejected"].to_pylist(), strict=True)]
    take = [i for s in (0, 1) for i in sorted((j for j, x in enumerate(stages) if x == s), key=lens.__getitem__)[:4]]
    data = tmp_path / "pairs.parquet"
    pq.write_table(arena.take(take), data)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": str(tiny_model_dir), "dataset": str(data), "output_dir": str(tmp_path / "run"),
        "loss": {"name": loss, "beta": 0.5}, "reference": {"model": str(tiny_model_dir)},
        "curriculum": {"mode": "iterative"},
        "train": {"batch_size": 2, "max_length": 1024, "lr": 2e-2, "warmup_ratio": 0.0, "seed": 0, "save_every": 1}}))
    res = train_from_recipe(recipe)
    assert res["rows_trained"] == 8 and res["steps"] == 4
    m = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["stage"] for x in m] == [0, 0, 1, 1]
    # the policy moved during stage 0, yet stage 1's first step has reference == policy (token by token): ln 2
    assert abs(m[1]["loss"] - math.log(2)) > 1e-4
    assert math.isclose(m[2]["loss"], math.log(2), abs_tol=1e-6), m[2]["loss"]

    ckpts = tmp_path / "run" / "checkpoints"
    saved = torch.load(ckpts / "step-000004" / "trainer_extra.pt", weights_only=False)["ref"]
    rows, tok_c, tok_r = saved["rows"], *saved["tok"]
    # stage 1 starts at step 3: its starting weights are the checkpoint after step 2
    lm, tok = load_model(str(tiny_model_dir), trust_remote_code=False)
    state = load_file(ckpts / "step-000002" / "model.safetensors")
    lm.load_state_dict({k.removeprefix("lm."): v for k, v in state.items()})
    table = pq.read_table(data)
    fresh = compute_reference(lm, tok, table, max_length=1024, device="cpu", with_tokens=True,
                              layout=res["layout"])
    stored = pq.read_table(next((tmp_path / "run" / "reference").glob("*.parquet")))
    for j, row in enumerate(rows):
        for name, store in zip(PAIR_TOK_REF, (tok_c, tok_r), strict=True):
            want = fresh[name][row].as_py() if stages[take[row]] == 1 else stored[name][row].as_py()
            got = store[j, :len(want)].tolist()
            assert got == pytest.approx(want, abs=1e-5), (row, name)
            assert not store[j, len(want):].any()
        if stages[take[row]] == 1:   # the refreshed reference differs from the stage-0 one it replaced
            assert fresh[PAIR_TOK_REF[0]][row].as_py() != pytest.approx(stored[PAIR_TOK_REF[0]][row].as_py(), abs=1e-4)
