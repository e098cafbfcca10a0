"""TDPO end to end in the text trainer: the online reference (a frozen model, or LoRA adapters off), the first
step's loss against a naive full-logits computation, and the two packing layouts giving the same step."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from training_kit import shortest_prompt_pairs

from training.encode import encode_groups
from training.packing import pack_rows
from training.run import load_model, train_from_recipe


@pytest.fixture(scope="module")
def pairs8(tmp_path_factory, hh_pairs):
    return shortest_prompt_pairs(hh_pairs, 8, tmp_path_factory.mktemp("tdpo") / "pairs8.parquet")


@pytest.fixture(scope="module")
def other_model(tmp_path_factory, tiny_model_dir):
    """The tiny model with every weight perturbed: a reference that differs from the policy."""
    lm, tok = load_model(str(tiny_model_dir), trust_remote_code=False)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in lm.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    out = tmp_path_factory.mktemp("ref") / "ref-model"
    lm.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _recipe(tmp: Path, **over) -> Path:
    r = {"model": str(over.pop("model")), "dataset": str(over.pop("dataset")),
         "loss": over.pop("loss", {"name": "tdpo1", "beta": 0.1}), "output_dir": str(tmp / "run"),
         "train": {"batch_size": 8, "max_length": 128, "lr": 1e-3, "warmup_ratio": 0.0, "seed": 0,
                   "max_steps": 1, **over.pop("train", {})}}
    r.update(over)
    p = tmp / "r.yaml"
    p.write_text(yaml.safe_dump(r))
    return p


def _metrics(res: dict) -> list[dict]:
    return [json.loads(x) for x in (Path(res["output_dir"]) / "metrics.jsonl").read_text().splitlines()]


def naive_tdpo1(policy_dir, ref_dir, data, beta=0.1, max_length=128) -> float:
    pol, tok = load_model(str(policy_dir), trust_remote_code=False)
    ref, _ = load_model(str(ref_dir), trust_remote_code=False)
    t = pq.read_table(data)
    groups = encode_groups(tok, t.column("prompt").to_pylist(),
                           [[c, r] for c, r in zip(t.column("chosen").to_pylist(), t.column("rejected").to_pylist(),
                                                   strict=True)], max_length=max_length).groups
    p = pack_rows(groups, tok.pad_token_id)
    with torch.no_grad():
        lq = torch.log_softmax(pol(input_ids=p.input_ids, attention_mask=p.attn).logits.double(), -1)[p.src_row, p.src_col]
        lr = torch.log_softmax(ref(input_ids=p.input_ids, attention_mask=p.attn).logits.double(), -1)[p.src_row, p.src_col]
    per = lambda v: torch.zeros(p.n_seqs, dtype=v.dtype).index_add(0, p.seq, v)  # noqa: E731
    logp_pol = per(lq.gather(1, p.targets[:, None])[:, 0])
    logp_ref = per(lr.gather(1, p.targets[:, None])[:, 0])
    kl = per((lr.exp() * (lr - lq)).sum(-1))
    rho = logp_pol - logp_ref
    h = rho[0::2] - rho[1::2]
    z = beta * h - beta * (kl[1::2] - kl[0::2])
    return float(torch.nn.functional.softplus(-z).mean())


@pytest.mark.parametrize("layout", ["shared", "rows"])
def test_tdpo1_first_step_equals_naive_full_logits(tmp_path, tiny_model_dir, other_model, pairs8, layout):
    res = train_from_recipe(_recipe(tmp_path, model=tiny_model_dir, dataset=pairs8,
                                    reference={"model": str(other_model)}, train={"layout": layout}))
    assert res["reference"]["status"] == "online" and res["layout"] == layout
    m = _metrics(res)[0]
    want = naive_tdpo1(tiny_model_dir, other_model, pairs8)
    assert abs(m["loss"] - want) < 1e-5, (m["loss"], want)
    assert m["loss/seq_kl_gap"] != 0.0          # the two models differ, so the KLs do


def test_tdpo2_with_lora_reference_trains(tmp_path, tiny_model_dir, pairs8):
    res = train_from_recipe(_recipe(tmp_path, model=tiny_model_dir, dataset=pairs8, loss={"name": "tdpo2"},
                                    lora={"r": 8, "alpha": 32}, train={"max_steps": 6, "lr": 2e-2}))
    m = _metrics(res)
    assert res["reference"]["model"] == "policy with LoRA adapters off"
    # step 1: LoRA starts as the identity, so policy == reference: KL 0, loss ln 2
    assert abs(m[0]["loss"] - math.log(2)) < 1e-6 and abs(m[0]["loss/seq_kl_gap"]) < 1e-6
    assert all(math.isfinite(r["loss"]) for r in m) and m[-1]["loss"] < m[0]["loss"]
    assert any(abs(r["loss/seq_kl_gap"]) > 1e-6 for r in m[1:])   # the policy moved away from the reference


def test_rows_layout_run_starts_exactly_at_ln2(tmp_path, tiny_model_dir, pairs8):
    """The reference pass packs like the training run, so at step 1 (policy == reference) DPO is ln 2 exactly."""
    res = train_from_recipe(_recipe(tmp_path, model=tiny_model_dir, dataset=pairs8, loss={"name": "dpo_sigmoid"},
                                    reference={"model": str(tiny_model_dir)}, train={"layout": "rows"}))
    assert res["layout"] == "rows" and _metrics(res)[0]["loss"] == pytest.approx(math.log(2), abs=1e-7)
