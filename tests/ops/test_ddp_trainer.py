"""`prefdata train` under torchrun with two CPU processes (gloo DDP) shards every micro-batch between them and
logs the same steps as one process on the whole batch: equal losses, reward accuracy, token counts and gradient
norms (KTO: the same z0, pooled across processes); the reference pass runs once (main process first, the other
finds its cache)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "training"))
from training_kit import shortest_prompt_pairs  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("loss", ["dpo_sigmoid", "kto"])
def test_two_process_training_equals_one_process(tmp_path, loss):
    from training.tiny import make_tiny_model, texts_of_table

    pairs = pq.read_table(ROOT / "tests" / "data" / "training" / "hh_pairs.parquet")
    data = shortest_prompt_pairs(pairs, 16, tmp_path / "pairs.parquet")
    model = make_tiny_model(tmp_path / "tiny", texts_of_table(pq.read_table(data)), vocab_size=600, seed=0,
                            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    runs = {}
    for name, launcher in (("single", [sys.executable, "-m", "prefdata.cli"]),
                           ("ddp", [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                    "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                                    "-m", "prefdata.cli"])):
        recipe = tmp_path / f"{name}.yaml"
        recipe.write_text(yaml.safe_dump({
            "model": str(model), "dataset": str(data), "loss": {"name": loss, "beta": 0.1},
            **({"unpaired": {"from_pairs": True}} if loss == "kto" else {}),   # KTO: z0 pooled across processes
            "reference": {"model": str(model)}, "output_dir": str(tmp_path / name),
            "train": {"batch_size": 4, "grad_accum": 2, "max_length": 128, "max_steps": 3, "lr": 1e-3,
                      "warmup_ratio": 0.0, "seed": 0}}))
        r = subprocess.run([*launcher, "train", str(recipe), "--json"], env=env, capture_output=True, text=True,
                           timeout=300, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        runs[name] = _metrics(tmp_path / name)
    one, two = runs["single"], runs["ddp"]
    assert [m["step"] for m in two] == [1, 2, 3]
    for a, b in zip(one, two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert (b["reward_accuracy"], b["tokens"], b["examples"]) == (a["reward_accuracy"], a["tokens"], a["examples"])
        if loss == "kto":
            assert b["loss/kto_z0"] == pytest.approx(a["loss/kto_z0"], rel=1e-5, abs=1e-6)
    assert one[-1]["loss"] < one[0]["loss"]
    assert len(list((tmp_path / "ddp" / "reference").glob("reference-*"))) == 1
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()) == ["step-000003"]
    # both processes' RNG states are inside the checkpoint (not left in a stray .tmp dir)
    assert {p.name for p in (tmp_path / "ddp" / "checkpoints" / "step-000003").glob("random_states_*")} == \
        {"random_states_0.pkl", "random_states_1.pkl"}
