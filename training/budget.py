"""How many padded tokens one forward(+backward) sub-batch may hold (`train.token_budget`), when the recipe
leaves it unset.

On a GPU the fastest step runs the whole micro-batch as ONE forward and ONE backward: every sub-batch re-runs
the model body's kernel launches and re-casts the weights under autocast, and small sub-batches leave the GPU
idle. So the budget is derived from the free device memory: what training will still allocate (gradients,
AdamW state, autocast weight copies, the LM-head chunk buffers) is set aside, and the rest, with headroom, is
divided by an estimate of the activation bytes one token keeps alive until backward.

On a CPU, throughput does not grow with bigger sub-batches (measured: 1024 and 2048 padded tokens per
sub-batch run at the same pairs/s as the whole batch at once, with less padding), but peak RSS does, so the
CPU default is 1024.
"""
from __future__ import annotations

import torch

CPU_DEFAULT = 1024
GPU_MIN, GPU_MAX = 1024, 1 << 17


def activation_bytes_per_token(config, *, mixed_precision: bool, grad_checkpointing: bool) -> int:
    """Upper estimate of the bytes one token's activations keep alive between forward and backward.

    Per decoder layer a Llama-style block saves ~18 hidden-sized tensors (norm inputs/outputs, q/k/v, attention
    output and statistics, residuals) and ~6 intermediate-sized ones (gate, up, activation, product); under bf16
    autocast about half are 2-byte copies, so 3 bytes per value on average (4 in fp32). With gradient
    checkpointing only each layer's input (fp32 residual) stays, plus one layer's full set during recompute."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    h = int(cfg.hidden_size)
    inter = int(getattr(cfg, "intermediate_size", None) or 4 * h)
    layers = int(cfg.num_hidden_layers)
    per_layer = (18 * h + 6 * inter) * (3 if mixed_precision else 4)
    if grad_checkpointing:
        return layers * 4 * h + per_layer
    return layers * per_layer


def resolve_token_budget(requested: int | None, lm: torch.nn.Module, device: torch.device | str, *,
                         mixed_precision: bool, grad_checkpointing: bool, head_bytes: int = 2**30) -> int:
    """`requested` if the recipe set one, else the budget that fits the device (see the module docstring)."""
    if requested is not None:
        return int(requested)
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_DEFAULT
    free, _total = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # cached by torch, reusable
    params = [p for p in lm.parameters()]
    trainable = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    # gradients (1x) + AdamW moments (2x) of the trainable weights are allocated after this point; autocast keeps a
    # half-precision copy of every fp32 weight alive through backward (bf16 master weights need none); the LM head
    # needs its chunk buffers twice over
    copies = sum(p.numel() * 2 for p in params if p.dtype == torch.float32) if mixed_precision else 0
    reserve = 3 * trainable + copies + 2 * head_bytes
    usable = 0.7 * free - reserve  # headroom for the allocator's fragmentation and the loss's small tensors
    per_token = activation_bytes_per_token(lm.config, mixed_precision=mixed_precision,
                                           grad_checkpointing=grad_checkpointing)
    return int(min(GPU_MAX, max(GPU_MIN, usable // per_token)))
