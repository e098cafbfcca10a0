"""Every loss on CUDA tensors (bf16 and float32 inputs): same values as on the CPU, gradients flow, nothing
silently moves to the CPU. Skipped without a GPU."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from test_loss_properties import CANONICAL, EXTRA_HP, _any_batch

from training.losses import LOSSES, RunningMean, resolve_loss

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _to(batch, device: str, dtype: torch.dtype):
    moved = {}
    for f in dataclasses.fields(batch):
        v = getattr(batch, f.name)
        if isinstance(v, torch.Tensor):
            v = v.detach().to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
            if f.name in ("pol_chosen", "pol_rejected", "pol", "mse_pol_w", "seg_mse_pol_w", "tok_pol_chosen",
                          "tok_pol_rejected"):
                v.requires_grad_()
        moved[f.name] = v
    return dataclasses.replace(batch, **moved)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", CANONICAL)
def test_cuda_matches_cpu(name, dtype):
    spec, params = resolve_loss(name, EXTRA_HP.get(name, {}))
    cpu_batch = _to(_any_batch(name, b=3), "cpu", dtype)
    gpu_batch = _to(cpu_batch, "cuda", dtype)
    cpu, gpu = spec.fn(cpu_batch, params), spec.fn(gpu_batch, params)
    assert gpu.loss.device.type == "cuda" and gpu.loss.dtype == torch.float32
    torch.testing.assert_close(gpu.loss.cpu(), cpu.loss, rtol=1e-4, atol=1e-4)
    for k, v in gpu.metrics.items():
        assert v.device.type == "cuda", k
    gpu.loss.mean().backward()
    grads = [getattr(gpu_batch, f.name).grad for f in dataclasses.fields(gpu_batch)
             if isinstance(getattr(gpu_batch, f.name), torch.Tensor) and getattr(gpu_batch, f.name).requires_grad]
    assert any(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads), name


def test_bco_running_mean_from_cpu_state_on_cuda():
    # the loop keeps RunningMean on the CPU; the loss must accept its value for a CUDA batch
    rm = RunningMean(window=4)
    rm.update(torch.tensor(0.1))
    spec, params = resolve_loss("bco_pair", {})
    b = _to(_any_batch("bco_pair"), "cuda", torch.float32)
    b.bco_delta = rm.value
    out = spec.fn(b, params)
    assert out.loss.device.type == "cuda" and out.metrics["bco_delta"].item() == pytest.approx(0.1)
    assert LOSSES["bco_pair"].kind == "pair"
