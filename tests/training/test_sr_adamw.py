"""bf16 master weights: stochastic rounding is unbiased, the AdamW math equals torch's, small updates survive
where plain bf16 AdamW drops them, the noise stream resumes exactly, and `master_weights: bf16` trains."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from test_train import metrics, write_recipe
from training_kit import shortest_prompt_pairs

from training.run import load_model, train_from_recipe
from training.sr_adamw import StochasticRoundingAdamW, round_stochastic_bf16, two_noises


def test_rounding_is_unbiased_and_picks_a_neighbour():
    # bf16 spacing at 1 is 2**-7, so 1 + 2**-10 lies 1/8 of the way up: it rounds up with probability 1/8
    x = torch.full((400_000,), 1 + 2**-10)
    r = round_stochastic_bf16(x, torch.Generator().manual_seed(0))
    assert r.dtype == torch.bfloat16
    assert set(r.float().unique().tolist()) == {1.0, 1 + 2**-7}
    assert abs((r.float() == 1 + 2**-7).float().mean().item() - 1 / 8) < 3e-3
    assert abs(r.float().mean().item() - (1 + 2**-10)) < 2e-5
    neg = round_stochastic_bf16(-x, torch.Generator().manual_seed(0))
    assert torch.equal(neg, -r)  # sign-symmetric: the noise acts on the magnitude bits
    exact = torch.tensor([0.0, -0.0, 1.0, -3.5, 2.0**-20, 65280.0])
    assert torch.equal(round_stochastic_bf16(exact).float(), exact)
    with pytest.raises(TypeError, match="float32"):
        round_stochastic_bf16(exact.double())


def test_one_draw_gives_two_independent_16_bit_noises():
    lo, hi = two_noises(200_000, "cpu", torch.Generator().manual_seed(3))
    for n in (lo, hi):
        assert n.dtype == torch.int32 and n.min().item() == 0 and n.max().item() == 2**16 - 1
        assert abs(n.float().mean().item() / 2**16 - 0.5) < 5e-3
    assert abs(torch.corrcoef(torch.stack([lo.float(), hi.float()]))[0, 1].item()) < 1e-2


def _twin_steps(opt_a, opt_b, a, b, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for x, y in zip(a, b, strict=True):
            grad = torch.randn(x.shape, generator=g)
            x.grad, y.grad = grad.to(x.dtype), grad.to(y.dtype)
        opt_a.step()
        opt_b.step()


def test_fp32_math_equals_torch_adamw_across_buckets():
    torch.manual_seed(0)
    a = [torch.randn(50, 30, requires_grad=True), torch.randn(7, requires_grad=True), torch.randn(300, requires_grad=True)]
    b = [t.detach().clone().requires_grad_() for t in a]
    ref = torch.optim.AdamW(a, lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)
    ours = StochasticRoundingAdamW(b, lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, bucket_elems=400)
    _twin_steps(ref, ours, a, b, steps=6)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(ours.state[y]["exp_avg_sq"], ref.state[x]["exp_avg_sq"], rtol=1e-6, atol=1e-9)


def test_small_bf16_updates_survive_in_expectation():
    """lr 1e-4 on weights at 1.0 (bf16 spacing just below 1 is 2**-8 = 3.9e-3): torch's AdamW on bf16 rounds
    every update away; the stochastic one moves the mean weight by the fp32 update."""
    n = 200_000
    ours_p = torch.ones(n, dtype=torch.bfloat16, requires_grad=True)
    plain_p = torch.ones(n, dtype=torch.bfloat16, requires_grad=True)
    ours = StochasticRoundingAdamW([ours_p], lr=1e-4)
    plain = torch.optim.AdamW([plain_p], lr=1e-4, weight_decay=0.0)
    for _ in range(5):
        ours_p.grad = torch.full((n,), 0.5, dtype=torch.bfloat16)
        plain_p.grad = ours_p.grad.clone()
        ours.step()
        plain.step()
    assert plain_p.float().mean().item() == 1.0  # the failure stochastic rounding exists for
    assert abs(ours_p.float().mean().item() - (1 - 5e-4)) < 2e-5  # Adam's first steps move each weight by ~lr
    # the second moment keeps its 0.1 % share of each new squared gradient: sum_t (1-b2) b2^(5-t) * 0.25
    want_v = 0.25 * (1 - 0.999**5)
    assert abs(ours.state[ours_p]["exp_avg_sq"].float().mean().item() - want_v) / want_v < 5e-3


def test_state_dict_resumes_the_same_noise_stream():
    torch.manual_seed(1)
    init = [torch.randn(64, 8), torch.randn(33)]
    a = [t.to(torch.bfloat16).requires_grad_() for t in init]
    opt = StochasticRoundingAdamW(a, lr=1e-3, weight_decay=0.01, seed=7)
    scratch = [t.detach().clone().requires_grad_() for t in a]
    _twin_steps(opt, StochasticRoundingAdamW(scratch, lr=1e-3), a, scratch, steps=3)
    saved = copy.deepcopy(opt.state_dict())  # as a checkpoint would (the live dict shares the moment tensors)
    assert "sr_rng" in saved and saved["state"][0]["step"] == 3
    b = [t.detach().clone().requires_grad_() for t in a]
    resumed = StochasticRoundingAdamW(b, lr=1e-3, weight_decay=0.01, seed=7)
    resumed.load_state_dict(saved)
    _twin_steps(opt, resumed, a, b, steps=4, seed=5)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    # another seed is another stream: the same step rounds differently
    c = [t.detach().clone().requires_grad_() for t in init[:1]]
    d = [t.detach().clone().requires_grad_() for t in init[:1]]
    c, d = [t.to(torch.bfloat16).detach().requires_grad_() for t in c], [t.to(torch.bfloat16).detach().requires_grad_() for t in d]
    _twin_steps(StochasticRoundingAdamW(c, lr=1e-3, seed=7), StochasticRoundingAdamW(d, lr=1e-3, seed=8), c, d, 1)
    assert not torch.equal(c[0], d[0])


def test_bf16_master_weights_train_and_resume_bit_exactly(tmp_path, tiny_model_dir, hh_pairs):
    pairs = shortest_prompt_pairs(hh_pairs, 8, tmp_path / "pairs8.parquet")  # every step sees the same 8 pairs
    common = {"model": tiny_model_dir, "dataset": pairs, "reference": {"model": str(tiny_model_dir)}}
    train = {"max_steps": 4, "save_every": 2, "optimizer_state": "all", "master_weights": "bf16", "lr": 3e-3}
    res = train_from_recipe(write_recipe(tmp_path, output_dir=tmp_path / "run", train=train, **common))
    first = metrics(Path(res["output_dir"]))
    assert abs(first[0]["loss"] - 0.693147) < 1e-3  # policy == reference (both bf16) at step 1
    assert all(m["loss"] == m["loss"] for m in first) and first[-1]["loss"] < first[0]["loss"]
    lm, _ = load_model(res["final_model"], trust_remote_code=False, dtype=torch.bfloat16)
    start, _ = load_model(str(tiny_model_dir), trust_remote_code=False, dtype=torch.bfloat16)
    assert next(lm.parameters()).dtype == torch.bfloat16
    moved = [not torch.equal(p, q) for p, q in zip(lm.parameters(), start.parameters(), strict=True)]
    assert sum(moved) == len(moved)  # every weight tensor moved (bf16, lr 3e-3)
    # resume from step 2: the same losses and bit-identical final weights (the rounding noise is checkpointed)
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-000004")
    train_from_recipe(tmp_path / "recipe.yaml", resume=True)
    again = metrics(tmp_path / "run")
    assert [m["loss"] for m in again] == [m["loss"] for m in first]
    lm2, _ = load_model(str(tmp_path / "run" / "final"), trust_remote_code=False, dtype=torch.bfloat16)
    assert all(torch.equal(p, q) for p, q in zip(lm.parameters(), lm2.parameters(), strict=True))
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-000004" / "trainer_state.json").read_text())
    assert state["recipe"]["train"]["master_weights"] == "bf16"
