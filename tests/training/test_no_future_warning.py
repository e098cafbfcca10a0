"""A LoRA run (TDPO, the policy with its adapters off as the online reference, like train_tdpo.yaml) prints no
FutureWarning: peft reads transformers' deprecated `is_gradient_checkpointing` itself, and training/peft_compat.py
keeps that one warning out of the output. Real subprocess, a parquet file of real pairs, a tiny random Llama."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[2]


def test_lora_tdpo_run_shows_no_future_warning(tmp_path, tiny_model_dir):
    arena = pq.read_table(REPO / "tests" / "data" / "training" / "arena_pairs.parquet")
    lengths = [len(p) for p in arena.column("prompt").to_pylist()]
    pq.write_table(arena.take(sorted(range(arena.num_rows), key=lengths.__getitem__)[:4]), tmp_path / "pairs.parquet")
    recipe = {"model": str(tiny_model_dir), "dataset": str(tmp_path / "pairs.parquet"),
              "loss": {"name": "tdpo2", "beta": 0.1, "alpha": 0.5},
              "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
              "train": {"batch_size": 2, "max_length": 128, "lr": 1e-3, "max_steps": 1, "warmup_ratio": 0.0},
              "output_dir": str(tmp_path / "run")}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "default"}
    proc = subprocess.run([sys.executable, "-m", "prefdata", "train", "r.yaml", "--catalog", "cat"], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "FutureWarning" not in proc.stderr, proc.stderr
    assert proc.stdout.startswith("trained   1 step in ")
