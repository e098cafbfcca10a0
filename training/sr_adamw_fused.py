"""The stochastic-rounding AdamW update as ONE fused elementwise kernel per bucket (`train.sr_adamw: compiled`),
built by torch.compile (Triton on a GPU, C++ on a CPU).

The bucketed update in sr_adamw.py gathers each bucket into four fp32 buffers and runs ~30 elementwise kernels
over them (lerp, mul, addcmul, sqrt, div, add, addcdiv, the noise split, the rounding, the casts and copies
back): ~180 bytes of memory traffic per parameter and step. Here the bucket is gathered in its own dtype (bf16:
2 bytes a value), ONE compiled kernel reads gradient, weight, both moments and the 32 noise bits and writes the
three new bf16 tensors, and they are copied back: ~50 bytes, no fp32 buffers, ~6 kernels per bucket. The
buckets are fresh contiguous tensors of (nearly) one size, so one dynamic-shape kernel serves them all.

Same algorithm and the same noise as the bucketed update: one 32-bit `randint` per bucket from the optimizer's
generator, drawn outside the compiled code (low half for the weight, high half for the second moment), and the
update written op for op in eager's order (addcdiv as `x + (s * m) / d` on a CPU, `x + s * (m / d)` on CUDA;
the scalars rounded to float32 as eager rounds Python scalars, and passed as a tensor so a new learning rate
does not recompile). Not bit-identical: torch's eager CPU kernels for lerp and addcmul use fused multiply-adds in
their vectorized loops (and plain ones in the tail), which compiled code does not reproduce, so the fp32
intermediates differ by an ulp or two; after rounding to bf16 (with the same noise) a value differs only where
that ulp crosses a rounding boundary (measured: about 1 value in 10^4..10^5, by one bf16 ulp; tested).
"""
from __future__ import annotations

import math
from functools import cache

import torch

LOW16 = 1 << 16
HIGH16_MASK = -LOW16


def _round_sr(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return (x.view(torch.int32) + noise).bitwise_and(HIGH16_MASK).view(torch.float32).to(torch.bfloat16)


def _update(x, m, v, g, bits, sc, *, stochastic: bool, decay: bool, cuda: bool):
    """One flat bucket: (new x, new m, new v) in x's dtype. bits: [n] int32 noise (bf16) or None.
    sc = [1 - lr*wd, 1 - b1, b2, 1 - b2, sqrt(1 - b2^t), eps, -lr / (1 - b1^t)] in the work dtype."""
    work = sc.dtype
    g32, x32, m32, v32 = (t.to(work) for t in (g, x, m, v))
    m32 = torch.lerp(m32, g32, sc[1])
    v32 = v32 * sc[2] + sc[3] * g32 * g32               # addcmul: self + (value * t1) * t2
    if decay:
        x32 = x32 * sc[0]
    denom = torch.sqrt(v32) / sc[4] + sc[5]
    x32 = x32 + sc[6] * (m32 / denom) if cuda else x32 + sc[6] * m32 / denom   # addcdiv, per device
    if stochastic:
        return (_round_sr(x32, bits.bitwise_and(LOW16 - 1)), m32.to(torch.bfloat16),
                _round_sr(v32, bits.bitwise_right_shift(16).bitwise_and(LOW16 - 1)))
    return x32.to(x.dtype), m32.to(m.dtype), v32.to(v.dtype)


@cache
def compiled_update(stochastic: bool, decay: bool, cuda: bool):
    """The compiled kernel of one static variant, made on first use (importing this module compiles nothing)."""
    def update(x, m, v, g, bits, sc):
        return _update(x, m, v, g, bits, sc, stochastic=stochastic, decay=decay, cuda=cuda)
    return torch.compile(update, dynamic=True, fullgraph=True)


def scalars(lr: float, betas: tuple[float, float], eps: float, wd: float, t: int, *, dtype: torch.dtype,
            device) -> torch.Tensor:
    """The update's scalars, rounded to the work dtype exactly as the eager kernels round Python scalars."""
    from training.transfer import to_device
    b1, b2 = betas
    vals = [1 - lr * wd, 1 - b1, b2, 1 - b2, math.sqrt(1 - b2 ** t), eps, -lr / (1 - b1 ** t)]
    return to_device(torch.tensor(vals, dtype=dtype), device)


def fused_bucket_update(segs, state, sc: torch.Tensor, bits: torch.Tensor | None, *, decay: bool) -> None:
    """One bucket (segments (param, start, end)) gathered in its dtype, updated by the compiled kernel, and
    written back; `bits`: the bucket's [n] int32 noise draw (None for fp32/fp64 parameters)."""
    def pieces(of) -> list[torch.Tensor]:
        return [of(p).detach().view(-1)[s:e] for p, s, e in segs]
    views = [pieces(lambda p: p), pieces(lambda p: state[p]["exp_avg"]), pieces(lambda p: state[p]["exp_avg_sq"])]
    x, m, v, g = (torch.cat(vs) for vs in (*views, pieces(lambda p: p.grad)))
    new = compiled_update(bits is not None, decay, segs[0][0].is_cuda)(x, m, v, g, bits, sc)
    sizes = [e - s for _, s, e in segs]
    for dst, src in zip(views, new, strict=True):
        torch._foreach_copy_(dst, list(src.split(sizes)))
