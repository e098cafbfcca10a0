"""What the trainer-vs-TRL benchmarks share: each trainer runs in its own subprocess (so peak memory is its
own), offline, and reports one JSON line; throughput is taken over the steps after the first (warm-up)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_worker(script: str, args: list[str], *, extra_path: str | None = None, timeout: float | None = None) -> dict:
    """Run `script --worker ARGS` with the repo (and `extra_path`, e.g. carried TRL wheels) on PYTHONPATH.
    Returns the worker's JSON, or {"error", "stderr_tail"} when it failed or ran past `timeout` seconds."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), extra_path) if p),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    try:
        p = subprocess.run([sys.executable, script, "--worker", *args], env=env, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired as e:
        tail = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return {"error": f"timeout after {timeout:.0f} s", "stderr_tail": tail[-3000:]}
    if p.returncode != 0:
        return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}",
                "stderr_tail": p.stderr[-3000:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def steady(r: dict) -> float:
    """examples/s over the steps after the first (the first includes one-time warm-up)."""
    t, n = r["step_times"][1:], r["examples"][1:]
    return sum(n) / sum(t) if t and sum(t) > 0 else float("nan")


def step_timer():
    """(a transformers TrainerCallback, the list it fills with each optimizer step's seconds). On a GPU the
    clock is read after a synchronize, so a step's queued kernels are counted in it."""
    import time

    import torch
    from transformers import TrainerCallback

    times: list[float] = []

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            sync()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            sync()
            times.append(time.perf_counter() - self.t0)

    return Timer(), times


def run_worker_or_raise(script: str, args: list[str]) -> dict:
    """`run_worker`, raising with the worker's stderr when it failed (CPU benches: a failure is a bug here)."""
    r = run_worker(script, args)
    if "error" in r:
        raise RuntimeError(f"worker {args[0]} failed:\n{r['stderr_tail']}")
    return r
