"""Helpers shared by the iterate tests (a module with its own name, not conftest: several test folders have a
conftest.py). A tiny random Llama (built once per session from a config), real prompts (the first bundled arena
questions, shortened so the tiny runs stay fast), and a two-round recipe on them."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
ARENA = ROOT / "examples" / "data" / "arena_bench_v1_7way_scored.jsonl"


def real_prompts(n: int = 30, chars: int = 120) -> list[str]:
    out = []
    with ARENA.open() as f:
        for line in f:
            out.append(json.loads(line)["prompt"][:chars])
            if len(out) == n:
                break
    return out


def make_model(path: Path) -> Path:
    from training.tiny import make_tiny_model
    return make_tiny_model(path, real_prompts(), vocab_size=600, seed=0, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def recipe(tmp: Path, model: Path, *, name: str = "it", rounds: int = 2, with_eval: bool = True, **train) -> Path:
    """A two-round recipe: 8 fresh prompts a round (2 shards), 4 samples each, a length rule, best_vs_worst DPO
    with a checkpoint every step, evaluation on 6 held-out prompts against the start and the previous policy."""
    prompts = tmp / "prompts.jsonl"
    if not prompts.exists():
        prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in real_prompts(24)))
    rule = {"kind": "rules", "name": "short", "rule": "length", "unit": "chars", "max": 22}
    data = {
        "name": name, "output_dir": str(tmp / "out"), "seed": 0, "rounds": rounds,
        "policy": {"path": str(model)},
        "prompts": {"source": {"path": str(prompts), "format": "prompts"}, "per_round": 8, "fresh": True,
                    "eval_prompts": {"holdout": 6}},
        "generate": {"models": [{"name": "policy", "path": "policy", "batch_size": 16, "device": "cpu"}], "n": 4,
                     "sampling": {"temperature": 1.0, "max_new_tokens": 10}, "shard_size": 4},
        "steps": [{"score": {"scorers": [rule], "set_score": "short"}}, {"pairs": {"strategy": "best_vs_worst"}}],
        "train": {"loss": {"name": "dpo_sigmoid", "beta": 0.1},
                  "train": {"batch_size": 2, "max_length": 64, "lr": 5e-3, "epochs": 1, "warmup_ratio": 0.0,
                            "save_every": 1, "seed": 0},
                  **train},
    }
    if with_eval:
        data["eval"] = {"generate": {"sampling": {"temperature": 0.0, "max_new_tokens": 10}, "batch_size": 16,
                                     "device": "cpu", "shard_size": 3},
                        "scorers": [rule], "bootstrap": {"n": 200, "seed": 0}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefdata", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=timeout)


def run_and_kill(recipe_path: Path, catalog: Path, point: str, out_dir: Path, *, timeout: float = 180) -> str:
    """Start `prefdata iterate` with the pause hook at `point`, wait until it stops itself there, SIGKILL it.
    Returns its stderr so far (for a failure message)."""
    marker = out_dir / ".paused"
    marker.unlink(missing_ok=True)
    log = recipe_path.parent / f"killed-{point.replace('@', '-')}.log"   # a file, not a pipe: it never fills up
    with log.open("w") as err_file:
        p = subprocess.Popen([sys.executable, "-m", "prefdata", "iterate", str(recipe_path), "--catalog", str(catalog)],
                             cwd=recipe_path.parent, stdout=subprocess.DEVNULL, stderr=err_file,
                             env={**os.environ, "OMP_NUM_THREADS": "1", "PREFDATA_TEST_PAUSE_AT": point})
    deadline = time.monotonic() + timeout
    while not marker.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    paused = marker.exists()
    if p.poll() is None:
        time.sleep(0.05)              # the marker is written just before the process stops itself
        os.kill(p.pid, signal.SIGKILL)
    p.wait()
    err = log.read_text()
    assert paused, f"never reached {point}: rc {p.returncode}\n{err[-3000:]}"
    assert p.returncode == -signal.SIGKILL, err[-3000:]
    marker.unlink()
    return err
