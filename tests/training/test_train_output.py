"""`prefdata train` into pipes (a log, not a terminal): every phase before the training bar says so on stderr
(model load, the reference pass with its row count, the drops with their reasons) and the run ends with a summary
on stdout (paths, steps, final metrics, dataset and reference versions) that `--json` carries as `summary`.
Real subprocesses, a Lance catalog in tmp_path, a tiny random Llama."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[2]


def _train(recipe: Path, cat: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(PYTHONPATH=str(REPO), TRANSFORMERS_VERBOSITY="error")
    return subprocess.run([sys.executable, "-m", "prefdata", "train", str(recipe), "--catalog", str(cat), *extra],
                          capture_output=True, text=True, env=env, cwd=recipe.parent, timeout=300)


def test_phases_on_stderr_summary_on_stdout_and_in_json(tmp_path, tiny_model_dir):
    from catalog import Catalog

    arena = pq.read_table(REPO / "tests" / "data" / "training" / "arena_pairs.parquet")
    cat = Catalog.open(tmp_path / "cat")
    # 6 rows; the 2 longest prompts fill max_length and are dropped
    lengths = [len(p) for p in arena.column("prompt").to_pylist()]
    order = sorted(range(arena.num_rows), key=lengths.__getitem__)
    table = arena.take(order[:4] + order[-2:])
    v1 = cat.write("arena-t", table, message="t", lineage={"builder": "test"})
    base = {"model": str(tiny_model_dir), "dataset": "arena-t", "loss": {"name": "dpo_sigmoid", "beta": 0.1},
            "train": {"batch_size": 2, "max_length": 96, "lr": 1e-3, "warmup_ratio": 0.0, "epochs": 1}}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({**base, "output_dir": str(tmp_path / "run-a")}))

    proc = _train(tmp_path / "a.yaml", tmp_path / "cat")
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    assert f"loading model {tiny_model_dir}: done in " in err
    assert f"reference pass over arena-t@{v1} …" in err
    assert f"reference pass over arena-t@{v1}: done, 4 rows in " in err
    assert "4 of 6 rows trained; dropped 2 prompt fills max_length=96" in err, err
    assert "Loading weights" not in err and "Writing model shards" not in err   # transformers' bars: off in a log
    run = tmp_path / "run-a"
    assert proc.stdout.splitlines()[0].startswith("trained   2 steps in ")
    assert proc.stdout.splitlines()[0].endswith(f" on arena-t@{v1 + 1}")
    lines = proc.stdout.splitlines()[1:]
    assert lines[0] == "rows      4 of 6 rows trained; dropped 2 prompt fills max_length=96"
    assert lines[1] == f"reference computed arena-t@{v1 + 1}"
    m = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[2] == f"final     loss {m[-1]['loss']:.4f} reward_accuracy {m[-1]['reward_accuracy']:.4f} " \
                       f"margin {m[-1]['margin']:.4f}"
    assert lines[3:6] == [f"model     {run / 'final'}", f"metrics   {run / 'metrics.jsonl'}",
                          f"run.json  {run / 'run.json'}"]
    ckpt_mb = round(sum(f.stat().st_size for f in (run / "checkpoints").rglob("*") if f.is_file()) / 2**20, 1)
    assert lines[6].startswith("disk      ") and lines[6].endswith(f" MB in {run} ({ckpt_mb} MB checkpoints)")

    # --json: the same summary; a second run trains on the version with the reference columns and says so
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({**base, "output_dir": str(tmp_path / "run-b")}))
    proc = _train(tmp_path / "b.yaml", tmp_path / "cat", "--json")
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)["summary"]
    assert f"reference pass: not needed, arena-t@{v1 + 1} stores the reference log-probs" in proc.stderr
    assert s["dataset"] == f"arena-t@{v1 + 1}"
    assert s["reference"] == {"status": "from dataset", "ref": f"arena-t@{v1 + 1}"}
    assert (s["steps"], s["rows_trained"], s["rows_in"]) == (2, 4, 6)
    assert s["rows_dropped"] == {"prompt fills max_length=96": 2}
    assert s["final_model"] == str(tmp_path / "run-b" / "final") and set(s["final"]) == {"loss", "reward_accuracy",
                                                                                           "margin"}
