"""The LM head's backward for one chunk of positions, shared by the chunked log-prob and sequential-KL
autograd Functions: gradient buffers, and from a chunk's logit gradients to the hidden-state and weight
gradients."""
from __future__ import annotations

import torch


def accumulate_head_grads(dl: torch.Tensor, h: torch.Tensor, w: torch.Tensor, sl: slice, *, acc: torch.dtype,
                          hidden_dtype: torch.dtype, gh: torch.Tensor | None, gw: torch.Tensor | None) -> None:
    """dl: [chunk, vocab] d(loss)/d(logits) already in the compute dtype (the caller frees its fp32 original
    first, so one chunk never holds both); h: the chunk's hidden states in the compute dtype."""
    if gh is not None:
        gh[sl] = (dl @ w).to(hidden_dtype)
    if gw is not None:
        if dl.dtype == acc:
            gw.addmm_(dl.t(), h)  # accumulate in place: no [vocab, hidden] temporary per chunk
        else:
            gw += (dl.t() @ h).to(acc)


def head_grad_buffers(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      acc: torch.dtype) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(grad hidden, grad weight, grad bias) buffers for the inputs 0, 1, 2 of an autograd Function that need
    them (None otherwise); weight and bias gradients accumulate in `acc` (>= fp32)."""
    need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    need_b = bias is not None and ctx.needs_input_grad[2]
    return (torch.empty_like(hidden) if need_h else None,
            torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None,
            torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None)
