"""Response log-probs without full-vocabulary logits for the whole batch.

The model body runs to hidden states; only the positions that predict a response token are kept, and the LM
head + log-softmax + gather run over those positions in chunks inside one autograd Function whose backward
recomputes each chunk's logits. So at most one chunk of `[chunk, vocab]` fp32 logits exists at any time, in the
forward and in the backward, and prompt/padding positions never reach the head at all.

`SequenceLogps` is an nn.Module around the causal LM so accelerate/DDP/FSDP wrap one forward; it consumes a
`Packed` batch (see packing.py: prompt once, responses after it) and returns per-response sums and counts.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prefdata.errors import RecipeError
from training.attention import packed_attention_inputs
from training.head_grad import accumulate_head_grads, head_grad_buffers
from training.seq_kl import chunked_logps_and_kl
from training.transfer import to_device


class _ChunkedTokenLogps(torch.autograd.Function):
    """log_softmax(h @ W.T + b)[target] for N selected positions, `chunk` positions at a time.

    Forward keeps only the [N] log-probs and the [N] log-normalizers (logsumexp); backward recomputes each
    chunk's logits once and turns them into the softmax in place (exp(logit - lse)), so a chunk costs one fp32
    [chunk, vocab] buffer (+ one compute-dtype copy under mixed precision) and no second logsumexp pass."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk: int, compute_dtype):
        out_dtype = torch.promote_types(hidden.dtype, torch.float32)
        w = weight.to(compute_dtype)
        b = None if bias is None else bias.to(compute_dtype)
        out = torch.empty(hidden.shape[0], dtype=out_dtype, device=hidden.device)
        lse = torch.empty_like(out)
        for s in range(0, hidden.shape[0], chunk):
            logits = nn.functional.linear(hidden[s:s + chunk].to(compute_dtype), w, b).to(out_dtype)
            lse[s:s + chunk] = torch.logsumexp(logits, dim=-1)
            out[s:s + chunk] = logits.gather(1, targets[s:s + chunk, None]).squeeze(1) - lse[s:s + chunk]
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk, ctx.compute_dtype = chunk, compute_dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        chunk, cdt = ctx.chunk, ctx.compute_dtype
        w = weight.to(cdt)
        b = None if bias is None else bias.to(cdt)
        acc = torch.promote_types(weight.dtype, torch.float32)  # weight grads accumulate in >= fp32
        gh, gw, gb = head_grad_buffers(ctx, hidden, weight, bias, acc)
        for s in range(0, hidden.shape[0], chunk):
            h = hidden[s:s + chunk].to(cdt)
            g = grad_out[s:s + chunk, None]
            # d/dlogits of (logit[t] - logsumexp) = onehot(t) - softmax; softmax = exp(logit - lse), in place
            dlogits = nn.functional.linear(h, w, b).to(lse.dtype)
            dlogits.sub_(lse[s:s + chunk, None]).exp_().mul_(-g)
            dlogits.scatter_add_(1, targets[s:s + chunk, None], g)
            dl = dlogits.to(cdt)  # no copy when the head computes in fp32/fp64
            if gb is not None:
                gb += dlogits.sum(0).to(acc)
            del dlogits
            accumulate_head_grads(dl, h, w, slice(s, s + chunk), acc=acc, hidden_dtype=hidden.dtype, gh=gh, gw=gw)
        return (gh, None if gw is None else gw.to(weight.dtype), None if gb is None else gb.to(bias.dtype),
                None, None, None)


def chunked_token_logps(hidden: torch.Tensor, lm_head: nn.Linear, targets: torch.Tensor, *, chunk: int = 1024,
                        compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """[N, H] hidden states of the predicting positions, [N] next tokens -> [N] log-probs (>= fp32)."""
    cdt = compute_dtype or lm_head.weight.dtype
    return _ChunkedTokenLogps.apply(hidden, lm_head.weight, lm_head.bias, targets, max(1, int(chunk)), cdt)


def auto_chunk(vocab_size: int, device: torch.device | str | None = None, budget_bytes: int | None = None) -> int:
    """Positions per LM-head chunk: a chunk needs ~8 bytes per logit (one fp32 buffer + a compute-dtype copy
    + the matmul output). Big chunks mean few large GEMMs and few [vocab, hidden] weight-gradient updates (each
    chunk reads and writes the whole fp32 weight gradient once), so a GPU gets 1 GiB (about 880 positions at a
    152k vocabulary, 33k at 8k), a CPU 256 MiB (RSS matters more there)."""
    if budget_bytes is None:
        budget_bytes = 2**30 if torch.device(device or "cpu").type == "cuda" else 2**28
    return max(64, budget_bytes // (8 * vocab_size))


@dataclass
class Packed:
    """A batch of groups laid out for one forward (built by packing.pack_groups)."""
    input_ids: torch.Tensor      # [G, L]
    position_ids: torch.Tensor   # [G, L]
    attn: torch.Tensor | None    # shared: [G, 1, L, L] bool, True = may attend; rows: [G, L] 0/1; packed: None
    src_row: torch.Tensor        # [N] row of the hidden state that predicts each response token
    src_col: torch.Tensor        # [N] column of that hidden state
    targets: torch.Tensor        # [N] the response token ids
    seq: torch.Tensor            # [N] response index in 0..S-1 (groups in order, responses in order)
    tok_pos: torch.Tensor        # [N] position of the token inside its response
    counts: torch.Tensor         # [S] tokens per response
    n_seqs: int
    max_resp: int
    n_tokens: int                # real (non-pad) tokens in the batch
    cu_seqlens: torch.Tensor | None = None  # packed layout: [S+1] int32 segment boundaries in the one row
    max_seqlen: int = 0                     # packed layout: the longest segment

    def to(self, device) -> Packed:
        kw = {k: (to_device(v, device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return Packed(**kw)


@dataclass
class SeqOut:
    sums: torch.Tensor           # [S] summed response log-probs
    counts: torch.Tensor         # [S] response token counts
    tokens: torch.Tensor | None  # [S, T] per-token log-probs (0 where masked), when asked for
    tok_mask: torch.Tensor | None
    kl: torch.Tensor | None = None        # [S] TDPO sequential KL(ref || policy), when asked for (online reference)
    ref_sums: torch.Tensor | None = None  # [S] the online reference's summed log-probs, alongside `kl`


def check_supported(config) -> None:
    """The chunked head computes plain logits; refuse configs whose head does more than a linear map."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier"):
        v = getattr(cfg, key, None)
        if v not in (None, 1, 1.0):
            raise RecipeError(f"model config sets {key}={v}; the chunked log-prob head supports plain linear heads only",
                              path="model")


BLOCK_MASK_IMPLS = ("sdpa", "eager")


def attn_implementation(lm: nn.Module) -> str:
    cfg = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    return str(getattr(cfg, "_attn_implementation", None) or "eager")


def block_mask_for(lm: nn.Module, attn: torch.Tensor) -> torch.Tensor:
    """The shared layout's [G, 1, L, L] boolean block mask in the form the model's attention consumes: SDPA takes
    the boolean mask as is; eager attention ADDS the mask to its scores, so it needs 0 / -inf-like floats (a
    boolean would be added as 0/1 and silently attend everywhere). Kernels that take no 4-D mask (FlashAttention,
    flex) cannot run the shared layout: the rows layout is the one for them. 2-D padding masks pass through."""
    if attn.dim() != 4:
        return attn
    impl = attn_implementation(lm)
    if impl == "sdpa":
        return attn
    if impl == "eager":
        dtype = lm.get_output_embeddings().weight.dtype
        if torch.is_autocast_enabled(attn.device.type):
            dtype = torch.get_autocast_dtype(attn.device.type)
        return torch.zeros(attn.shape, dtype=dtype, device=attn.device).masked_fill_(~attn, torch.finfo(dtype).min)
    raise RecipeError(f"attention implementation {impl!r} takes no block mask: the shared-prompt layout needs "
                      f"one of {BLOCK_MASK_IMPLS}; set train.layout: rows", path="train.layout")


ADAPTERS_OFF = "adapters_off"


class SequenceLogps(nn.Module):
    """Wraps a causal LM: Packed batch -> per-response summed log-probs (and per-token values on request).

    `reference` (only for losses that need the reference's full distributions, TDPO): a frozen model, or
    ADAPTERS_OFF for the policy with its LoRA adapters disabled. It is kept out of the module tree on purpose,
    so optimizers, DDP and checkpoints see the policy only; the caller places it on the device."""

    def __init__(self, lm: nn.Module, *, chunk: int | None = None, compute_dtype: torch.dtype | None = None,
                 reference: nn.Module | str | None = None):
        super().__init__()
        check_supported(lm.config)
        self.lm = lm
        self.chunk = chunk  # None: auto_chunk for the device the forward runs on
        self.compute_dtype = compute_dtype
        self.__dict__["reference"] = reference  # bypasses nn.Module registration (see the class doc)

    def _hidden(self, lm: nn.Module, b: Packed) -> torch.Tensor:
        if b.cu_seqlens is None:
            attn = {"attention_mask": block_mask_for(lm, b.attn)}
        else:   # packed layout: the segments' pattern in the form the model's attention takes (attention.py)
            attn = packed_attention_inputs(attn_implementation(lm), b.cu_seqlens, b.max_seqlen, b.n_tokens)
            if isinstance(attn["attention_mask"], torch.Tensor):   # sdpa / eager: the dense block mask
                attn["attention_mask"] = block_mask_for(lm, attn["attention_mask"])
        hidden = lm.get_decoder()(input_ids=b.input_ids, position_ids=b.position_ids, use_cache=False,
                                  **attn).last_hidden_state
        # index_select (backward = index_add) handles the prompt position shared by every response's first token
        return hidden.flatten(0, 1).index_select(0, b.src_row * hidden.shape[1] + b.src_col)

    @torch.no_grad()
    def _reference_hidden(self, b: Packed) -> tuple[torch.Tensor, nn.Module]:
        ref = self.__dict__["reference"]
        if ref is None:
            raise RecipeError("this loss needs an online reference model (reference.model, or LoRA)", path="reference")
        if ref == ADAPTERS_OFF:
            with self.lm.disable_adapter():
                return self._hidden(self.lm, b), self.lm.get_output_embeddings()
        return self._hidden(ref, b), ref.get_output_embeddings()

    def forward(self, b: Packed, with_tokens: bool = False, with_kl: bool = False) -> SeqOut:
        sel = self._hidden(self.lm, b)
        head = self.lm.get_output_embeddings()
        chunk = self.chunk or auto_chunk(head.weight.shape[0], sel.device)
        kl = ref_sums = None
        if with_kl:
            ref_sel, ref_head = self._reference_hidden(b)
            # the KL pass keeps two chunks of logits alive: half the chunk keeps the same memory bound
            tok, ref_tok, kl_tok = chunked_logps_and_kl(sel, head, b.targets, ref_sel, ref_head,
                                                        chunk=max(1, chunk // 2), compute_dtype=self.compute_dtype)
            kl = torch.zeros(b.n_seqs, dtype=tok.dtype, device=tok.device).index_add(0, b.seq, kl_tok)
            ref_sums = torch.zeros(b.n_seqs, dtype=tok.dtype, device=tok.device).index_add(0, b.seq, ref_tok)
        else:
            tok = chunked_token_logps(sel, head, b.targets, chunk=chunk, compute_dtype=self.compute_dtype)
        sums = torch.zeros(b.n_seqs, dtype=tok.dtype, device=tok.device).index_add(0, b.seq, tok)
        counts = b.counts  # known on the host: no bincount (a device sync on a GPU)
        tokens = mask = None
        if with_tokens:
            tokens = torch.zeros(b.n_seqs, b.max_resp, dtype=tok.dtype, device=tok.device)
            tokens = tokens.index_put((b.seq, b.tok_pos), tok)
            mask = torch.zeros(b.n_seqs, b.max_resp, dtype=torch.bool, device=tok.device)
            mask[b.seq, b.tok_pos] = True
        return SeqOut(sums=sums, counts=counts, tokens=tokens, tok_mask=mask, kl=kl, ref_sums=ref_sums)
