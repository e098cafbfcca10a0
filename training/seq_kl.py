"""Sequential KL for TDPO: `D(y) = Σ_t KL(π_ref(·|x,y_<t) ‖ π_θ(·|x,y_<t))` over a response's positions, with the
target log-probs of both models, from hidden states, in chunks.

Both models' full-vocabulary distributions are needed at every response position (spec §1.14), which is the
memory problem TDPO is known for. Here only hidden states are kept ([N, H] per model); each chunk's logits are
made, used and freed, in the forward and again in the backward. The gradient of the KL with respect to the
policy's logits is `softmax(z) − p_ref` (Σ p_ref = 1), and that of the target log-prob is `onehot − softmax(z)`,
so one recomputed chunk serves both: `dz = (g_kl − g_lp)·softmax(z) − g_kl·p_ref + g_lp·onehot`.
"""
from __future__ import annotations

import torch
from torch import nn

from training.head_grad import accumulate_head_grads, head_grad_buffers


def _logits(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    return nn.functional.linear(h, w, b).to(out_dtype)


class _ChunkedLogpsKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ref_hidden, ref_weight, ref_bias, chunk: int, cdt):
        out_dtype = torch.promote_types(hidden.dtype, torch.float32)
        w, b = weight.to(cdt), None if bias is None else bias.to(cdt)
        rw, rb = ref_weight.to(cdt), None if ref_bias is None else ref_bias.to(cdt)
        N = hidden.shape[0]
        logp, ref_logp, kl = (torch.empty(N, dtype=out_dtype, device=hidden.device) for _ in range(3))
        lse = torch.empty_like(logp)
        for s in range(0, N, chunk):
            sl = slice(s, s + chunk)
            z = _logits(hidden[sl].to(cdt), w, b, out_dtype)
            lse[sl] = torch.logsumexp(z, -1)
            logq = z.sub_(lse[sl, None])                                   # policy log-probs, in place
            zr = _logits(ref_hidden[sl].to(cdt), rw, rb, out_dtype)
            logr = zr.sub_(torch.logsumexp(zr, -1, keepdim=True))          # reference log-probs
            t = targets[sl, None]
            logp[sl] = logq.gather(1, t).squeeze(1)
            ref_logp[sl] = logr.gather(1, t).squeeze(1)
            kl[sl] = (logr.exp() * (logr - logq)).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, targets, lse, ref_hidden, ref_weight, ref_bias)
        ctx.chunk, ctx.cdt = chunk, cdt
        ctx.mark_non_differentiable(ref_logp)
        return logp, ref_logp, kl

    @staticmethod
    def backward(ctx, g_lp, _g_ref, g_kl):
        hidden, weight, bias, targets, lse, ref_hidden, ref_weight, ref_bias = ctx.saved_tensors
        chunk, cdt = ctx.chunk, ctx.cdt
        w, b = weight.to(cdt), None if bias is None else bias.to(cdt)
        rw, rb = ref_weight.to(cdt), None if ref_bias is None else ref_bias.to(cdt)
        acc = torch.promote_types(weight.dtype, torch.float32)
        g_lp = torch.zeros_like(lse) if g_lp is None else g_lp.to(lse.dtype)
        g_kl = torch.zeros_like(lse) if g_kl is None else g_kl.to(lse.dtype)
        gh, gw, gb = head_grad_buffers(ctx, hidden, weight, bias, acc)
        for s in range(0, hidden.shape[0], chunk):
            sl = slice(s, s + chunk)
            h = hidden[sl].to(cdt)
            a, k = g_lp[sl, None], g_kl[sl, None]
            zr = _logits(ref_hidden[sl].to(cdt), rw, rb, lse.dtype)
            pr = torch.softmax(zr, -1)
            dz = _logits(h, w, b, lse.dtype).sub_(lse[sl, None]).exp_().mul_(k - a)   # (g_kl - g_lp) softmax
            dz.sub_(pr.mul_(k))
            dz.scatter_add_(1, targets[sl, None], a)
            del pr, zr
            if gb is not None:
                gb += dz.sum(0).to(acc)
            dl = dz.to(cdt)
            del dz
            accumulate_head_grads(dl, h, w, sl, acc=acc, hidden_dtype=hidden.dtype, gh=gh, gw=gw)
        return (gh, None if gw is None else gw.to(weight.dtype), None if gb is None else gb.to(bias.dtype),
                None, None, None, None, None, None)


def chunked_logps_and_kl(hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor, ref_hidden: torch.Tensor,
                         ref_head: nn.Linear, *, chunk: int = 1024, compute_dtype: torch.dtype | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[N] policy target log-probs (grad), [N] reference target log-probs (no grad), [N] per-position
    KL(ref ‖ policy) (grad), from [N, H] hidden states of both models at the positions predicting `targets`."""
    cdt = compute_dtype or head.weight.dtype
    ref_hidden = ref_hidden.detach()
    return _ChunkedLogpsKL.apply(hidden, head.weight, head.bias, targets, ref_hidden, ref_head.weight.detach(),
                                 None if ref_head.bias is None else ref_head.bias.detach(), max(1, int(chunk)), cdt)
