"""Attention for the packed layout (`train.layout: packed`, packing.pack_packed): several prompt+response segments
in ONE row with no padding, position ids restarting at 0 in every segment, each token attending only to the
earlier tokens of its own segment (block-diagonal, causal within a segment).

How each attention implementation (`train.attention`, or the model's own) gets that pattern:

| implementation | what it receives | kernel | where |
|---|---|---|---|
| `varlen` (ours, registered with transformers as `prefdata_varlen`) | segment boundaries `cu_seqlens` | CUDA: torch's fused FlashAttention varlen kernel (`torch.nn.attention.varlen.varlen_attn`, causal, GQA) — no mask, cost = sum of segment² ; CPU: SDPA `is_causal` per segment (the same math, a loop of fused CPU kernels) | the GPU default for `packed` |
| `flex_attention` | a `BlockMask` built from the segment ids | torch's flex attention (compiled by transformers); empty blocks are skipped | `auto` on a GPU whose torch has no varlen kernel (< 2.10); no CPU backward |
| `flash_attention_2` / `_3` | `cu_seq_lens_q/k`, `max_length_q/k` (transformers' FlashAttention kwargs) | the flash-attn package's varlen kernel | when that package is installed |
| `sdpa` | a dense `[1, 1, N, N]` boolean block-diagonal causal mask | SDPA's masked kernels, cost = N² | the CPU default (the CPU fallback) |
| `eager` | the same mask, additive (0 / dtype min) | matmul + softmax | tests, models without SDPA |

The dense mask is what SDPA and eager need, and it costs N² (memory and FLOPs) for a packed row of N tokens; the
token budget (`train.token_budget`, real tokens per packed row; 1024 on a CPU) keeps N small where it is used.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prefdata.errors import RecipeError

VARLEN = "prefdata_varlen"          # the name our varlen attention is registered under in transformers
ATTENTION_CHOICES = ("auto", "sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3", "varlen")
MASK_FREE = (VARLEN, "flash_attention_2", "flash_attention_3")   # take segment boundaries instead of a mask


def varlen_kernel_available() -> bool:
    """torch's fused varlen FlashAttention (torch >= 2.10, CUDA builds)."""
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def varlen_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask, dropout: float = 0.0, scaling: float | None = None, *,
                     cu_seq_lens_q: torch.Tensor | None = None, max_length_q: int | None = None,
                     sliding_window: int | None = None, softcap: float | None = None, **_):
    """transformers attention interface: [1, H, N, D] query, [1, Hkv, N, D] key/value of one packed row ->
    ([1, N, H, D], None), each token attending causally within its segment (`cu_seq_lens_q`, [S+1] int32)."""
    if cu_seq_lens_q is None or attention_mask is not None:
        raise RecipeError("train.attention varlen runs only the packed layout (segment boundaries, no mask): set "
                          "train.layout: packed", path="train.attention")
    if sliding_window is not None or softcap is not None or dropout:
        raise RecipeError("train.attention varlen supports plain causal attention only (no sliding window, logit "
                          "softcap or attention dropout); use sdpa", path="train.attention")
    if query.shape[0] != 1:
        raise ValueError(f"varlen attention takes one packed row, got a batch of {query.shape[0]}")
    gqa = query.shape[1] != key.shape[1]
    if query.is_cuda:
        if query.dtype not in (torch.float16, torch.bfloat16):
            raise RecipeError(f"train.attention varlen runs FlashAttention, which needs bf16/fp16 compute (got "
                              f"{query.dtype}): set train.mixed_precision bf16 (or master_weights bf16)",
                              path="train.attention")
        from torch.nn.attention.varlen import varlen_attn
        q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))   # [N, H, D]
        cu = cu_seq_lens_q.to(torch.int32)
        out = varlen_attn(q, k, v, cu, cu, int(max_length_q), int(max_length_q), scale=scaling,
                          window_size=(-1, 0), enable_gqa=gqa)
        return out.unsqueeze(0), None
    # CPU: the fused causal SDPA kernel once per segment (no N x N mask, no cross-segment work)
    bounds = cu_seq_lens_q.tolist()
    parts = [F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=True,
                                            scale=scaling, enable_gqa=gqa)
             for s, e in zip(bounds[:-1], bounds[1:], strict=True)]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def register_varlen() -> None:
    """Make `prefdata_varlen` a transformers attention implementation (idempotent; done by set_attention, so
    importing this module does not import transformers)."""
    from transformers import AttentionInterface
    AttentionInterface.register(VARLEN, varlen_attention)


def block_diagonal_causal(cu_seqlens: torch.Tensor, n: int) -> torch.Tensor:
    """[1, 1, n, n] bool, True where a query may attend: same segment and not in the future."""
    seg = torch.repeat_interleave(torch.arange(len(cu_seqlens) - 1, device=cu_seqlens.device),
                                  cu_seqlens.diff().long(), output_size=n)
    causal = torch.ones(n, n, dtype=torch.bool, device=cu_seqlens.device).tril_()
    return (causal & (seg[:, None] == seg[None, :]))[None, None]


def flex_block_mask(cu_seqlens: torch.Tensor, n: int):
    """The block-diagonal causal pattern as a flex-attention BlockMask (blocks outside every segment skipped)."""
    from torch.nn.attention.flex_attention import create_block_mask
    seg = torch.repeat_interleave(torch.arange(len(cu_seqlens) - 1, device=cu_seqlens.device),
                                  cu_seqlens.diff().long(), output_size=n)

    def same_segment_causal(b, h, q, kv):
        return (seg[q] == seg[kv]) & (q >= kv)
    return create_block_mask(same_segment_causal, B=None, H=None, Q_LEN=n, KV_LEN=n, device=cu_seqlens.device)


def packed_attention_inputs(impl: str, cu_seqlens: torch.Tensor, max_seqlen: int, n: int) -> dict:
    """The decoder kwargs that confine attention to the segments of one packed row, for implementation `impl`
    (sdpa / eager get the dense boolean mask; logps.block_mask_for turns it additive for eager)."""
    if impl in MASK_FREE:
        return {"attention_mask": None, "cu_seq_lens_q": cu_seqlens, "cu_seq_lens_k": cu_seqlens,
                "max_length_q": max_seqlen, "max_length_k": max_seqlen}
    if impl == "flex_attention":
        return {"attention_mask": flex_block_mask(cu_seqlens, n)}
    if impl in ("sdpa", "eager"):
        return {"attention_mask": block_diagonal_causal(cu_seqlens, n)}
    raise RecipeError(f"attention implementation {impl!r} has no packed-sequence support here; use one of "
                      f"{ATTENTION_CHOICES[1:]}", path="train.attention")


def resolve_attention(requested: str, *, layout: str, device) -> str | None:
    """The transformers attention implementation to set, or None to keep the model's own. `auto`: for the packed
    layout on a GPU, `varlen` (torch's fused varlen kernel), or flex attention where torch has no varlen kernel;
    everything else keeps what the model loaded with (SDPA for the models the trainer loads; on a CPU the packed
    layout then runs SDPA with the block mask: flex attention has no CPU backward)."""
    if requested == "auto":
        if layout != "packed" or torch.device(device).type != "cuda":
            return None
        return VARLEN if varlen_kernel_available() else "flex_attention"
    return VARLEN if requested == "varlen" else requested


def set_attention(lm: nn.Module, requested: str, *, layout: str, device) -> str:
    """Apply `train.attention` to a loaded model; returns the implementation it runs with."""
    impl = resolve_attention(requested, layout=layout, device=device)
    if impl == VARLEN:
        register_varlen()
    if impl is not None:
        try:
            lm.set_attn_implementation(impl)
        except (ImportError, ValueError) as e:   # e.g. flash_attention_2 without the flash-attn package
            raise RecipeError(f"attention {requested!r}: {str(e).splitlines()[0]}", path="train.attention") from None
    cfg = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    return str(getattr(cfg, "_attn_implementation", None) or "eager")
