"""The packed (padding-free) layout: hand-worked structure and budget, log-probs equal to the padded layouts and the
naive oracle under SDPA (block mask), eager (additive block mask) and varlen (per-segment kernel), the same
gradients, recipe checks, and a full training run whose losses equal the padded run's.

Tolerances. In float64 the layouts agree to 1e-10 (SDPA, varlen) and 1e-6 (eager: transformers' eager softmax
runs in float32 even for a float64 model, so its ~1e-7 rounding differs with the row length). In float32 the
per-token math is the same in every layout but the GEMMs have other shapes (one [1, N] row vs [R, L] padded
rows), which may change the summation order: each log-prob (|x| ~ 8) may move by a few float32 ulps (~1e-6),
and a response's sum over <= 100 tokens by <= 1e-4; observed here: 0 for SDPA/varlen, 7.6e-6 for eager."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from test_layouts import _grads
from test_logps import _groups, naive_logps
from test_train import metrics, write_recipe
from training_kit import recipe_error, shortest_prompt_pairs, small_llama

from prefdata.errors import RecipeError
from training.attention import VARLEN, block_diagonal_causal, set_attention
from training.encode import Group
from training.forward import group_logps
from training.logps import SequenceLogps
from training.packing import pack, pack_packed, split_by_tokens
from training.recipe import load_train_recipe
from training.run import train_from_recipe

TWO = [Group(row=0, prompt_ids=[5, 6], response_ids=[[7], [8, 9]]),
       Group(row=1, prompt_ids=[3], response_ids=[[4, 4], [2]])]


def test_packed_row_is_the_segments_back_to_back():
    p = pack_packed(TWO)
    # segments [5 6 7] [5 6 8 9] [3 4 4] [3 2]: no pad token anywhere
    assert p.input_ids.tolist() == [[5, 6, 7, 5, 6, 8, 9, 3, 4, 4, 3, 2]]
    assert p.position_ids.tolist() == [[0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 0, 1]]
    assert p.cu_seqlens.tolist() == [0, 3, 7, 10, 12] and p.cu_seqlens.dtype == torch.int32
    assert (p.max_seqlen, p.n_tokens, p.n_seqs, p.max_resp) == (4, 12, 4, 2)
    # token j of a response is predicted by the position before it, in its own segment
    assert p.src_col.tolist() == [1, 4, 5, 7, 8, 10] and p.src_row.tolist() == [0] * 6
    assert p.targets.tolist() == [7, 8, 9, 4, 4, 2]
    assert p.seq.tolist() == [0, 1, 1, 2, 2, 3] and p.tok_pos.tolist() == [0, 0, 1, 0, 1, 0]
    assert p.counts.tolist() == [1, 2, 2, 1] and p.attn is None


def test_block_diagonal_mask_is_causal_within_each_segment():
    m = block_diagonal_causal(torch.tensor([0, 3, 7], dtype=torch.int32), 7)[0, 0]
    assert m.shape == (7, 7)
    assert m[2].tolist() == [True, True, True, False, False, False, False]
    assert m[3].tolist() == [False, False, False, True, False, False, False]   # a segment's first token: itself
    assert m[6].tolist() == [False, False, False, True, True, True, True]
    assert int(m.sum()) == 6 + 10   # 3*4/2 + 4*5/2


def test_packed_budget_counts_real_tokens():
    # real tokens per group in the packed layout: (prompt + response) per response -> 3 + 4 = 7, 3 + 2 = 5
    assert split_by_tokens(TWO, 12, "packed") == [[0, 1]]
    assert split_by_tokens(TWO, 11, "packed") == [[0], [1]]
    assert split_by_tokens(TWO, 1, "packed") == [[0], [1]]   # a group longer than the budget stands alone
    four = TWO + [Group(row=2, prompt_ids=[1] * 4, response_ids=[[2], [3] * 3]),   # 5 + 7 = 12
                  Group(row=3, prompt_ids=[1], response_ids=[[2], [3]])]           # 2 + 2 = 4
    assert split_by_tokens(four, 13, "packed") == [[0, 1], [2], [3]]
    assert split_by_tokens(four, 16, "packed") == [[0, 1], [2, 3]]


def _use(lm, attn):
    set_attention(lm, "varlen" if attn == VARLEN else attn, layout="packed", device="cpu")


@pytest.mark.parametrize("attn", ["sdpa", "eager", VARLEN])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_packed_logps_equal_padded_layouts_and_oracle(tokenizer, hh_pairs, attn, dtype):
    groups = _groups(tokenizer, hh_pairs, 4)
    pad = tokenizer.pad_token_id
    lm = small_llama(len(tokenizer), dtype=dtype)
    model = SequenceLogps(lm, chunk=64)
    with torch.no_grad():
        rows = model(pack(groups, pad, "rows"), True)   # the padded layouts under the model's SDPA
        shared = model(pack(groups, pad, "shared"), True)
        oracle, counts = naive_logps(lm, groups, pad)
        _use(lm, attn)
        packed = model(pack(groups, pad, "packed"), True)
    assert lm.config._attn_implementation == attn
    if dtype == torch.float64:
        tol = {"rtol": 1e-6, "atol": 1e-6} if attn == "eager" else {"rtol": 1e-10, "atol": 1e-10}
    else:
        tol = {"rtol": 1e-6, "atol": 1e-4}
    for other in (rows, shared):
        torch.testing.assert_close(packed.sums, other.sums, **tol)
        torch.testing.assert_close(packed.tokens, other.tokens, **tol)   # per-token values (LD-DPO, TDPO's ...)
        assert torch.equal(packed.tok_mask, other.tok_mask)
    torch.testing.assert_close(packed.sums, oracle.to(dtype), **tol)
    assert packed.counts.tolist() == counts.tolist() == rows.counts.tolist()
    assert packed.sums.dtype == dtype


@pytest.mark.parametrize("attn", ["sdpa", VARLEN])
def test_packed_gradients_equal_rows_fp64(tokenizer, hh_pairs, attn):
    groups = _groups(tokenizer, hh_pairs, 3)
    pad = tokenizer.pad_token_id
    lm = small_llama(len(tokenizer), dtype=torch.float64)
    model = SequenceLogps(lm, chunk=32)
    w = torch.linspace(0.5, 1.5, 6, dtype=torch.float64)
    s_rows, g_rows = _grads(lm, model, pack(groups, pad, "rows"), w)
    _use(lm, attn)
    s_packed, g_packed = _grads(lm, model, pack(groups, pad, "packed"), w)
    torch.testing.assert_close(s_packed, s_rows, rtol=1e-10, atol=1e-10)
    for k, g in g_rows.items():
        assert float((g_packed[k] - g).abs().max()) <= 1e-10 * float(g.abs().max()), k


def test_packed_sub_batches_under_a_budget_equal_one_row(tokenizer, hh_pairs):
    groups = _groups(tokenizer, hh_pairs, 6)
    lm = small_llama(len(tokenizer), dtype=torch.float64)
    model = SequenceLogps(lm, chunk=32)
    kw = {"pad_id": tokenizer.pad_token_id, "device": "cpu", "layout": "packed", "with_tokens": True}
    whole = group_logps(model, groups, token_budget=1 << 20, **kw)
    split = group_logps(model, groups, token_budget=64, **kw)   # one group per packed row
    torch.testing.assert_close(split.sums, whole.sums, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(split.tokens, whole.tokens, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("train, match", [
    ({"attention": "varlen", "layout": "rows"}, "packed layout only"),
    ({"attention": "varlen"}, "packed layout only"),
    ({"attention": "flex_attention", "layout": "shared"}, "4-D block mask"),
    ({"attention": "paged"}, "Input should be"),
])
def test_recipe_refuses_attention_that_does_not_fit_the_layout(tmp_path, train, match):
    p = write_recipe(tmp_path, model=tmp_path / "m", dataset=tmp_path / "d.parquet", train=train)
    err = recipe_error(p, load=partial(load_train_recipe, check_data=False))
    assert match in str(err) and err.path.startswith("train")


def test_attention_that_cannot_load_is_a_recipe_error(tokenizer):
    lm = small_llama(len(tokenizer))
    with pytest.raises(RecipeError, match="train.attention.*flash_attention_2"):
        set_attention(lm, "flash_attention_2", layout="packed", device="cpu")


@pytest.mark.parametrize("loss", [{"name": "dpo_sigmoid", "beta": 0.1}, {"name": "ld_dpo", "beta": 0.1, "alpha": 0.5}])
def test_packed_training_run_has_the_padded_runs_losses(tmp_path, tiny_model_dir, hh_pairs, loss):
    """3 steps of 4 pairs, reference pass included (LD-DPO: per-token reference log-probs), rows vs packed."""
    pairs = shortest_prompt_pairs(hh_pairs, 12, tmp_path / "pairs.parquet")
    runs = {}
    for layout in ("rows", "packed"):
        recipe = write_recipe(tmp_path, name=f"{layout}.yaml", model=tiny_model_dir, dataset=pairs, loss=loss,
                              output_dir=tmp_path / layout, reference={"model": str(tiny_model_dir)},
                              train={"max_steps": 3, "batch_size": 4, "layout": layout, "token_budget": 512})
        res = train_from_recipe(recipe)
        assert res["layout"] == layout and res["attention"] == "sdpa"
        runs[layout] = metrics(Path(res["output_dir"]))
    if loss["name"] == "dpo_sigmoid":   # policy == reference at step 1, both from the packed layout
        assert abs(runs["packed"][0]["loss"] - 0.693147) < 1e-5
    # float32 rounding (observed <= 3.5e-5 on log-prob sums of ~-700, 5e-7 on the loss), growing a little per step
    for a, b in zip(runs["packed"], runs["rows"], strict=True):
        assert a["examples"] == b["examples"] and a["tokens"] == b["tokens"]
        for k in ("loss", "logps_chosen", "logps_rejected", "grad_norm"):
            assert abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(b[k])), (k, a[k], b[k])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch's varlen FlashAttention kernel needs a CUDA GPU")
def test_varlen_kernel_on_gpu_equals_rows_in_bf16(tokenizer, hh_pairs):
    groups = _groups(tokenizer, hh_pairs, 4)
    lm = small_llama(len(tokenizer)).cuda()
    model = SequenceLogps(lm, chunk=64)
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
        rows = model(pack(groups, tokenizer.pad_token_id, "rows").to("cuda"))
        _use(lm, VARLEN)
        packed = model(pack(groups, tokenizer.pad_token_id, "packed").to("cuda"))
    torch.testing.assert_close(packed.sums, rows.sums, rtol=2e-2, atol=0.5)   # bf16 compute: ~3 digits


def test_vlm_recipe_refuses_the_text_only_packing_keys():
    from training.vlm_recipe import parse_vlm_recipe
    base = {"vlm": {"model": "m"}, "dataset": "d", "loss": {"name": "dpo_sigmoid", "beta": 0.1}, "output_dir": "o"}
    for train in ({"layout": "packed"}, {"attention": "eager"}):
        with pytest.raises(RecipeError, match="text-trainer options"):
            parse_vlm_recipe({**base, "train": train})
    assert parse_vlm_recipe({**base, "train": {"layout": "auto"}}).train.layout == "auto"
