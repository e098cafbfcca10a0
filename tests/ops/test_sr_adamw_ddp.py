"""Under DDP every process must hold the same weights. Stochastic rounding draws noise at every step, so the
bf16 optimizer takes it from its own generator seeded from the recipe seed (not from each process's global RNG,
which the processes consume differently): two gloo processes with different data shards stay bit-identical,
and giving them different seeds (the control) makes them diverge."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

WORKER = r'''
import sys, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from training.sr_adamw import StochasticRoundingAdamW
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 8)).to(torch.bfloat16)
ddp = DDP(model)
seed = 0 if sys.argv[1] == "same" else rank
opt = StochasticRoundingAdamW(ddp.parameters(), lr=1e-5, weight_decay=0.01, seed=seed, bucket_elems=5000)
torch.manual_seed(100 + rank)          # each process its own data and its own global RNG stream
torch.rand(rank * 7 + 1)
for _ in range(4):
    x = torch.randn(16, 64, dtype=torch.bfloat16)
    ddp(x).float().pow(2).mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
flat = torch.cat([p.detach().float().reshape(-1) for p in model.parameters()])
gathered = [torch.empty_like(flat) for _ in range(2)]
dist.all_gather(gathered, flat)
if rank == 0:
    moved = (flat != 0).sum().item()
    print("EQUAL" if torch.equal(gathered[0], gathered[1]) else "DIFFERENT", moved)
dist.destroy_process_group()
'''


@pytest.mark.parametrize("seeds, want", [("same", "EQUAL"), ("per_rank", "DIFFERENT")])
def test_two_processes_keep_identical_bf16_weights(tmp_path, seeds, want):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    # gloo on the loopback device: a CI box's hostname may resolve to an interface the two processes cannot
    # reach each other on; --standalone lets the launcher pick its own free rendezvous port (no race with the
    # other xdist worker for a port chosen here)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(script), seeds],
                       env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[:4000], r.stderr[-2000:])
    assert r.stdout.split()[0] == want, r.stdout
