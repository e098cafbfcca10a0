"""The performance paths: the chunked head's bias / mixed-precision branches against plain autograd, and the
token-budget resolution (explicit value, CPU default, activation estimate)."""
from __future__ import annotations

import torch
from training_kit import small_llama

from training.budget import CPU_DEFAULT, activation_bytes_per_token, resolve_token_budget
from training.logps import auto_chunk, chunked_token_logps


def _naive(h, head, t):
    return torch.log_softmax(head(h).double(), -1).gather(1, t[:, None]).squeeze(1)


def test_chunked_head_with_bias_equals_autograd_fp64():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=True, dtype=torch.float64)
    h = torch.randn(23, 16, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 50, (23,))
    g = torch.linspace(-1, 2, 23, dtype=torch.float64)
    (_naive(h, head, t) * g).sum().backward()
    ref = [h.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()]
    h.grad = head.weight.grad = head.bias.grad = None
    out = chunked_token_logps(h, head, t, chunk=5)  # 5 chunks, ragged last one
    torch.testing.assert_close(out, _naive(h, head, t).detach(), rtol=1e-12, atol=1e-12)
    (out * g).sum().backward()
    for got, want in zip([h.grad, head.weight.grad, head.bias.grad], ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_chunked_head_bf16_compute_keeps_fp32_outputs_and_grads():
    torch.manual_seed(1)
    head = torch.nn.Linear(32, 300, bias=False)
    h = torch.randn(40, 32, requires_grad=True)
    t = torch.randint(0, 300, (40,))
    out = chunked_token_logps(h, head, t, chunk=16, compute_dtype=torch.bfloat16)
    assert out.dtype == torch.float32
    want = _naive(h, head, t).float()
    torch.testing.assert_close(out, want, rtol=2e-2, atol=5e-2)  # bf16 logits: ~3 significant digits
    out.sum().backward()
    assert head.weight.grad.dtype == torch.float32 and h.grad.dtype == torch.float32
    h2 = h.detach().clone().requires_grad_(True)
    w2 = head.weight.detach().clone().requires_grad_(True)
    torch.log_softmax(h2 @ w2.t(), -1).gather(1, t[:, None]).sum().backward()
    cos = torch.nn.functional.cosine_similarity(head.weight.grad.flatten(), w2.grad.flatten(), dim=0)
    assert cos > 0.999
    torch.testing.assert_close(h.grad, h2.grad, rtol=5e-2, atol=2e-2)


def test_token_budget_resolution_on_cpu():
    lm = small_llama(100)
    assert resolve_token_budget(4096, lm, "cpu", mixed_precision=False, grad_checkpointing=False) == 4096
    assert resolve_token_budget(None, lm, "cpu", mixed_precision=False, grad_checkpointing=False) == CPU_DEFAULT
    full = activation_bytes_per_token(lm.config, mixed_precision=False, grad_checkpointing=False)
    cfg = lm.config
    assert full == cfg.num_hidden_layers * (18 * cfg.hidden_size + 6 * cfg.intermediate_size) * 4
    assert activation_bytes_per_token(lm.config, mixed_precision=True, grad_checkpointing=False) < full
    assert activation_bytes_per_token(lm.config, mixed_precision=False, grad_checkpointing=True) < full


def test_auto_chunk_sizes():
    assert auto_chunk(151_936, "cuda") == 2**30 // (8 * 151_936)  # ~880 positions per GPU chunk
    assert auto_chunk(8000, "cpu") == 2**28 // (8 * 8000)
    assert auto_chunk(10**9, "cpu") == 64  # never below 64 positions
