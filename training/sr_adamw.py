"""AdamW for bf16 weights and bf16 moments, written back with stochastic rounding (`train.master_weights: bf16`).

Mixed precision normally keeps fp32 master weights, fp32 gradients and two fp32 AdamW moments: 16 bytes per
trained parameter (7.4 GiB for a 0.5B model) before any activation. Keeping all of them in bf16 halves that, but
plain bf16 AdamW silently stops learning: bf16 has 8 significant bits, so at DPO's learning rates (1e-6 .. 1e-5)
an update is far below half a unit in the last place of the weight and rounds back to the old value, and the
second moment's `(1 - beta2) = 0.001` share of a new squared gradient is lost the same way. Stochastic rounding
rounds up with probability equal to the discarded fraction, so every write is unbiased: small updates move the
weights in expectation instead of vanishing (Zamirai et al. 2020, "Revisiting BFloat16 Training").

The math runs in fp32 on buckets of concatenated parameters (a few dozen kernels per bucket instead of a dozen
per tensor), then the weight and exp_avg_sq are rounded back stochastically (one 32-bit draw gives both their
16-bit noises) and exp_avg to nearest (it moves by 10 % of the gradient step each time: nothing to lose).
fp32/fp64 parameters in the same optimizer (e.g. LoRA adapters) get the same AdamW math with a plain exact write.

The rounding noise comes from the optimizer's own generator, seeded from `seed` and saved in its state dict: DDP
processes draw identical noise (their weights stay identical) and a resumed run continues the same stream.
"""
from __future__ import annotations

import math
import os
import shutil

import torch

from prefdata.errors import RecipeError
from training.sr_adamw_fused import HIGH16_MASK, LOW16, fused_bucket_update, scalars

# LOW16 = 2**16; HIGH16_MASK = 0xFFFF0000 as a signed int32: keeps sign, exponent and the top 7 mantissa bits


def round_stochastic_bf16(x: torch.Tensor, generator: torch.Generator | None = None, *,
                          noise: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 -> bf16, rounding up (in magnitude) with probability = the discarded low 16 bits / 2**16.

    bf16 is the top half of an fp32 word, so adding uniform noise to the low half and truncating it is exactly
    stochastic rounding; the integer add carries into the exponent when the mantissa overflows, and the sign bit
    is untouched, so negative values round symmetrically. Exactly representable values come back unchanged.
    `noise`: int32 values in [0, 2**16) to use instead of drawing them."""
    if x.dtype != torch.float32:
        raise TypeError(f"round_stochastic_bf16 takes float32, got {x.dtype}")
    if noise is None:
        noise = torch.randint(0, LOW16, x.shape, dtype=torch.int32, device=x.device, generator=generator)
    bits = x.view(torch.int32).add(noise).bitwise_and_(HIGH16_MASK)
    return bits.view(torch.float32).to(torch.bfloat16)  # exact: the low 16 bits are zero


def noise_bits(n: int, device, generator: torch.Generator | None) -> torch.Tensor:
    """[n] int32 of random bits: the one draw per bucket both implementations split into their two noises."""
    return torch.randint(-2**31, 2**31 - 1, (n,), dtype=torch.int32, device=device, generator=generator)


def two_noises(n: int, device, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent [n] int32 tensors of 16-bit noise from ONE 32-bit draw (its low and high halves): the
    draw is a full pass over memory, so the weights and the second moment share it."""
    r = noise_bits(n, device, generator)
    return r.bitwise_and(LOW16 - 1), r.bitwise_right_shift(16).bitwise_and_(LOW16 - 1)


SR_IMPLS = ("bucketed", "compiled")


class StochasticRoundingAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, bias-corrected moments, torch.optim.AdamW's update) whose state has the
    parameters' dtype; bf16 parameters and moments are written with stochastic rounding (module doc)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, *, seed: int = 0, bucket_elems: int = 1 << 23, impl: str = "bucketed"):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid AdamW hyperparameters: lr={lr} betas={betas} eps={eps} wd={weight_decay}")
        if impl not in SR_IMPLS:
            raise ValueError(f"impl {impl!r}: expected one of {SR_IMPLS}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        self.seed, self.bucket_elems, self.impl = seed, int(bucket_elems), impl
        self._generators: dict[str, torch.Generator] = {}
        self._pending_rng: dict[str, torch.Tensor] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            g = torch.Generator(device=device)
            g.manual_seed(self.seed)
            if key in self._pending_rng:  # restored by load_state_dict before the first step
                g.set_state(self._pending_rng.pop(key))
            self._generators[key] = g
        return self._generators[key]

    def _buckets(self, group: dict):
        """Segments (param, start, end) of the parameters with gradients, grouped by (device, dtype, step
        count) and packed into buckets of <= bucket_elems elements. Big tensors (a 152k x 896 embedding is
        136M elements) are cut into pieces, so the fp32 work buffers stay ~6 x 4 x bucket_elems bytes whatever
        the largest parameter."""
        keyed: dict[tuple, list[torch.Tensor]] = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("StochasticRoundingAdamW does not support sparse gradients")
            if not (p.is_contiguous() and p.grad.is_contiguous()):
                raise RuntimeError(f"StochasticRoundingAdamW needs contiguous parameters and gradients "
                                   f"(got a {tuple(p.shape)} parameter with strides {p.stride()})")
            st = self.state[p]
            if not st:
                st["step"] = 0
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            keyed.setdefault((p.device, p.dtype, st["step"]), []).append(p)
        cap = self.bucket_elems
        for (device, dtype, step), ps in keyed.items():
            bucket, n = [], 0
            for p in ps:
                for s in range(0, p.numel(), cap):
                    e = min(p.numel(), s + cap)
                    if bucket and n + e - s > cap:
                        yield device, dtype, step, bucket
                        bucket, n = [], 0
                    bucket.append((p, s, e))
                    n += e - s
            if bucket:
                yield device, dtype, step, bucket

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            stepped: set[int] = set()
            for device, dtype, step, segs in self._buckets(group):
                t = step + 1
                work = torch.promote_types(dtype, torch.float32)  # fp32 math for bf16/fp16, fp64 stays fp64
                if self.impl == "compiled":   # one fused kernel per bucket, the same noise (sr_adamw_fused.py)
                    bits = noise_bits(sum(e - s for _, s, e in segs), device, self._generator(device)) \
                        if dtype == torch.bfloat16 else None
                    fused_bucket_update(segs, self.state, scalars(lr, (b1, b2), eps, wd, t, dtype=work, device=device),
                                        bits, decay=bool(wd))
                    stepped.update(id(p) for p, _, _ in segs)
                    continue
                dst = [[p.view(-1)[s:e] for p, s, e in segs],
                       [self.state[p]["exp_avg"].view(-1)[s:e] for p, s, e in segs],
                       [self.state[p]["exp_avg_sq"].view(-1)[s:e] for p, s, e in segs]]
                sizes = [e - s for _, s, e in segs]
                # cat straight into fp32 buffers: the cast happens in the copy (one pass, not cat + cast)
                g, x, m, v = (torch.cat(parts, out=torch.empty(sum(sizes), dtype=work, device=device))
                              for parts in ([p.grad.view(-1)[s:e] for p, s, e in segs], *dst))
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                del g
                if wd:
                    x.mul_(1 - lr * wd)
                denom = v.sqrt().div_(math.sqrt(1 - b2 ** t)).add_(eps)
                x.addcdiv_(m, denom, value=-lr / (1 - b1 ** t))
                del denom
                # weights and second moment are written with stochastic rounding; the first moment moves by
                # (1 - beta1) = 10 % of (g - m) per step, far above bf16's resolution, so nearest rounding loses
                # nothing systematic there and saves a noise pass
                nx, nv = two_noises(x.numel(), device, self._generator(device)) if dtype == torch.bfloat16 \
                    else (None, None)
                for out_views, src, noise in zip(dst, (x, m, v), (nx, None, nv), strict=True):
                    out = src.to(dtype) if noise is None else round_stochastic_bf16(src, noise=noise)
                    torch._foreach_copy_(out_views, list(out.split(sizes)))
                    del out
                stepped.update(id(p) for p, _, _ in segs)
            for p in group["params"]:
                if id(p) in stepped:
                    self.state[p]["step"] += 1
        return loss

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["sr_rng"] = {k: g.get_state() for k, g in self._generators.items()} | dict(self._pending_rng)
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        rng = state_dict.pop("sr_rng", {})
        super().load_state_dict(state_dict)
        self._generators.clear()
        self._pending_rng = {k: v.cpu() for k, v in rng.items()}


def resolve_sr_impl(requested: str, device) -> str:
    """`auto` -> the implementation measured faster on that device type (AUTO_SR_IMPL; docs/training.md, "Fused
    SR AdamW"), bucketed where torch.compile cannot build kernels (no C++ compiler). `compiled` without a
    compiler is a RecipeError here, before training starts."""
    if requested == "bucketed":
        return requested
    if requested == "compiled":
        if not compiler_available():
            raise RecipeError("train.sr_adamw compiled builds its kernel with torch.compile, which needs a C++ "
                              "compiler (g++/clang++ or $CXX) on PATH; use bucketed", path="train.sr_adamw")
        return requested
    want = AUTO_SR_IMPL[torch.device(device).type == "cuda"]
    return want if want == "bucketed" or compiler_available() else "bucketed"


# {on CUDA?: impl}. CPU: compiled measured 2.5-3.5x faster per step (40M bf16 values, after the one-time compile);
# CUDA: not measured yet (no GPU in that session; benchmarks/gpu/bench_gpu_packed.py measures both)
AUTO_SR_IMPL = {False: "compiled", True: "bucketed"}


def compiler_available() -> bool:
    return any(shutil.which(c) for c in (os.environ.get("CXX"), "g++", "clang++", "c++") if c)


def make_adamw(params: list[torch.nn.Parameter], *, lr: float, weight_decay: float, master_weights: str = "fp32",
               seed: int = 0, sr_impl: str = "bucketed") -> torch.optim.Optimizer:
    """The trainers' optimizer: torch's fused AdamW (one kernel per step instead of a dozen per parameter; CPU
    ~8x faster, no temporaries) for fp32 master weights, the stochastic-rounding AdamW for bf16 ones."""
    if master_weights == "bf16":
        return StochasticRoundingAdamW(params, lr=lr, weight_decay=weight_decay, seed=seed, impl=sr_impl)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay,
                             fused=all(p.is_floating_point() for p in params))
