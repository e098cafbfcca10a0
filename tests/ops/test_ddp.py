"""Two CPU processes under torchrun (gloo DDP), 2 pairs each, give the same loss, gradients and updated
weights as one process on the doubled batch of 4 pairs."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "PYTHONPATH": str(HERE.parents[1]), "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_equals_one_process_with_doubled_batch(tmp_path):
    single, ddp = tmp_path / "single.json", tmp_path / "ddp.json"
    sys.path.insert(0, str(HERE))
    try:   # the one-process reference runs in this process (saves a second interpreter start)
        import ddp_step
    finally:
        sys.path.remove(str(HERE))
    ddp_step.main("single", str(single))
    r2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                         "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                         str(HERE / "ddp_step.py"), "ddp", str(ddp)], env=ENV, capture_output=True, text=True,
                        timeout=300)
    assert r2.returncode == 0, r2.stderr[-3000:]
    a, b = json.loads(single.read_text()), json.loads(ddp.read_text())
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-6, abs=1e-7)
    assert a["loss"] > 0
    for name in a["grads"]:
        assert b["grads"][name] == pytest.approx(a["grads"][name], rel=1e-4, abs=1e-6), name
        assert b["weights"][name] == pytest.approx(a["weights"][name], rel=1e-5, abs=1e-6), name
    assert any(abs(g) > 0 for gs in a["grads"].values() for g in gs)
