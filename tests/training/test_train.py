"""End-to-end training on real pairs with a tiny random Llama: overfit, exact resume after SIGKILL, lists."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from training_kit import shortest_prompt_pairs

from prefdata.errors import PrefdataError
from training.reference import compute_reference
from training.run import load_model, train_from_recipe

ROOT = Path(__file__).resolve().parents[2]


def write_recipe(tmp: Path, name: str = "recipe.yaml", **over) -> Path:
    r = {"model": str(over.pop("model")), "dataset": str(over.pop("dataset")),
         "loss": over.pop("loss", {"name": "dpo_sigmoid", "beta": 0.1}),
         "output_dir": str(over.pop("output_dir", tmp / "run")),
         "train": {"batch_size": 8, "max_length": 192, "lr": 3e-3, "warmup_ratio": 0.0, "seed": 0,
                   **over.pop("train", {})}}
    r.update(over)
    p = tmp / name
    p.write_text(yaml.safe_dump(r))
    return p


def metrics(out_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def pairs64(tmp_path_factory, hh_pairs):
    """64 real HH-RLHF pairs with the shortest prompts (so a small max_length keeps all of them)."""
    return shortest_prompt_pairs(hh_pairs, 64, tmp_path_factory.mktemp("data") / "pairs64.parquet")


def test_overfits_64_real_pairs(tmp_path, tiny_model_dir, pairs64):
    recipe = write_recipe(tmp_path, model=tiny_model_dir, dataset=pairs64,
                          reference={"model": str(tiny_model_dir)}, train={"max_steps": 24, "batch_size": 16, "lr": 5e-3})
    res = train_from_recipe(recipe)
    assert res["rows_trained"] == 64 and res["steps"] == 24
    assert res["reference"]["status"] == "computed"
    m = metrics(Path(res["output_dir"]))
    assert [r["step"] for r in m] == list(range(1, 25))
    assert abs(m[0]["loss"] - 0.693147) < 1e-4  # policy == reference at step 1
    # training reward accuracy of the final policy over all 64 pairs, against the stored reference
    lm, tok = load_model(res["final_model"], trust_remote_code=False)
    table = pq.read_table(next((tmp_path / "run" / "reference").glob("*.parquet")))
    pol = compute_reference(lm, tok, table, max_length=192, device="cpu")
    margin = [(pc - table["ref_logp_chosen"][i].as_py()) - (pr - table["ref_logp_rejected"][i].as_py())
              for i, (pc, pr) in enumerate(zip(pol["ref_logp_chosen"].to_pylist(), pol["ref_logp_rejected"].to_pylist(),
                                               strict=True))]
    acc = sum(x > 0 for x in margin) / len(margin)
    assert acc >= 0.95, acc
    # the second run reuses the cached reference log-probs
    again = write_recipe(tmp_path, "r2.yaml", model=tiny_model_dir, dataset=pairs64,
                         reference={"model": str(tiny_model_dir)}, train={"max_steps": 1})
    with pytest.raises(PrefdataError, match="holds checkpoints of an earlier run"):   # nothing overwritten
        train_from_recipe(again)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-000024"]
    # once the old checkpoints are cleared, the rerun reuses the cached reference log-probs (no second pass)
    shutil.rmtree(tmp_path / "run" / "checkpoints")
    res2 = train_from_recipe(again)
    assert res2["reference"]["status"] == "skipped"


def _run_cli(recipe: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", "import sys; from training.run import train_from_recipe; "
                             "train_from_recipe(sys.argv[1], resume='--resume' in sys.argv)", str(recipe), *extra],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_and_resume_gives_the_same_losses(tmp_path, tiny_model_dir, pairs64):
    common = {"model": tiny_model_dir, "dataset": pairs64, "reference": {"model": str(tiny_model_dir)}}
    full = write_recipe(tmp_path, "full.yaml", output_dir=tmp_path / "full", train={"max_steps": 6}, **common)
    r = train_from_recipe(full)
    want = [m["loss"] for m in metrics(Path(r["output_dir"]))]
    killed = write_recipe(tmp_path, "killed.yaml", output_dir=tmp_path / "killed",
                          train={"max_steps": 6, "save_every": 2}, **common)
    proc = _run_cli(killed)
    ck = tmp_path / "killed" / "checkpoints" / "step-000004"
    deadline = time.time() + 120
    while not ck.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert ck.exists(), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "timeout"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = [m["step"] for m in metrics(tmp_path / "killed")]
    assert max(done) < 6  # it really was interrupted
    proc = _run_cli(killed, "--resume")
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]
    got = [m["loss"] for m in metrics(tmp_path / "killed")]
    assert got == want  # bit-exact on CPU with a fixed seed
    state = json.loads((tmp_path / "killed" / "checkpoints" / "step-000006" / "trainer_state.json").read_text())
    assert state["dataset"] == str(pairs64) and len(state["config_sha256"]) == 64 and state["recipe"]["loss"]


def test_listwise_plackett_luce_training(tmp_path, tiny_model_dir, arena_lists):
    p = tmp_path / "lists.parquet"
    pq.write_table(arena_lists.slice(0, 16), p)
    recipe = write_recipe(tmp_path, model=tiny_model_dir, dataset=p, loss={"name": "plackett_luce_dpo", "beta": 0.1},
                          reference={"model": str(tiny_model_dir)}, train={"max_steps": 3, "batch_size": 4,
                                                                           "max_length": 96})
    res = train_from_recipe(recipe)
    m = metrics(Path(res["output_dir"]))
    assert len(m) == 3 and all(torch.isfinite(torch.tensor(x["loss"])) for x in m)
    # arena prompts longer than max_length are dropped and counted, never silently lost
    assert res["rows_trained"] + sum(res["rows_dropped"].values()) == 16
    assert res["rows_trained"] >= 8 and set(res["rows_dropped"]) <= {"prompt fills max_length=96"}


def test_resume_refuses_a_changed_recipe(tmp_path, tiny_model_dir, pairs64):
    common = {"model": tiny_model_dir, "dataset": pairs64, "reference": {"free": True}}
    train_from_recipe(write_recipe(tmp_path, "a.yaml", train={"max_steps": 2, "save_every": 1}, **common))
    changed = write_recipe(tmp_path, "b.yaml", train={"max_steps": 2, "save_every": 1, "lr": 1e-4}, **common)
    with pytest.raises(PrefdataError, match=r"cannot resume .*train differ"):
        train_from_recipe(changed, resume=True)
    # save_every / log_every may change on resume
    same = write_recipe(tmp_path, "c.yaml", train={"max_steps": 2, "save_every": 2, "log_every": 2}, **common)
    assert train_from_recipe(same, resume=True)["resumed_from"] == 2
