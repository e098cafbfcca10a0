"""Checkpoint retention: only the newest checkpoint keeps its optimizer state (what resume needs), with
`train.save_total_limit` only the newest N are kept, and the run reports its disk use. A tiny random Llama on
real pairs, trained for 3 steps with a checkpoint each step, then resumed from the newest."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import yaml

from training.checkpointing import disk_use, prune_checkpoints
from training.run import train_from_recipe

REPO = Path(__file__).resolve().parents[2]


def test_prune_keeps_optimizer_in_newest_only(tmp_path):
    for step in (1, 2, 3):
        d = tmp_path / "checkpoints" / f"step-{step:06d}"
        d.mkdir(parents=True)
        for f in ("model.safetensors", "optimizer.bin", "random_states_0.pkl", "trainer_state.json"):
            (d / f).write_bytes(b"x" * 10)
    (tmp_path / "checkpoints" / "step-000004.tmp").mkdir()      # an interrupted write is not a checkpoint
    assert prune_checkpoints(tmp_path, keep=2) == [tmp_path / "checkpoints" / "step-000001"]
    files = {p.parent.name + "/" + p.name for p in (tmp_path / "checkpoints").rglob("*") if p.is_file()}
    assert files == {"step-000002/model.safetensors", "step-000002/random_states_0.pkl",
                     "step-000002/trainer_state.json", "step-000003/model.safetensors", "step-000003/optimizer.bin",
                     "step-000003/random_states_0.pkl", "step-000003/trainer_state.json"}
    assert disk_use(tmp_path) == {"total_mb": round(70 / 2**20, 1), "checkpoints_mb": round(70 / 2**20, 1),
                                  "checkpoints": 2}


def test_training_run_retention_resume_and_disk(tmp_path, tiny_model_dir):
    arena = pq.read_table(REPO / "tests" / "data" / "training" / "arena_pairs.parquet")
    lengths = [len(p) for p in arena.column("prompt").to_pylist()]
    pq.write_table(arena.take(sorted(range(arena.num_rows), key=lengths.__getitem__)[:6]), tmp_path / "p.parquet")
    recipe = {"model": str(tiny_model_dir), "dataset": str(tmp_path / "p.parquet"),
              "loss": {"name": "dpo_sigmoid", "beta": 0.1}, "reference": {"model": str(tiny_model_dir)},
              "train": {"batch_size": 2, "max_length": 128, "lr": 1e-3, "warmup_ratio": 0.0, "epochs": 1,
                        "save_every": 1, "save_total_limit": 2},
              "output_dir": str(tmp_path / "run")}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    res = train_from_recipe(tmp_path / "r.yaml")
    ckpts = tmp_path / "run" / "checkpoints"
    assert res["steps"] == 3 and sorted(p.name for p in ckpts.iterdir()) == ["step-000002", "step-000003"]
    assert not (ckpts / "step-000002" / "optimizer.bin").exists() and (ckpts / "step-000003" / "optimizer.bin").exists()
    assert (ckpts / "step-000002" / "model.safetensors").exists()
    run_bytes = sum(f.stat().st_size for f in (tmp_path / "run").rglob("*") if f.is_file())
    assert res["disk"]["total_mb"] == round(run_bytes / 2**20, 1) and res["disk"]["checkpoints"] == 2
    again = train_from_recipe(tmp_path / "r.yaml", resume=True)     # resume reads the newest (with its optimizer)
    assert again["resumed_from"] == 3
