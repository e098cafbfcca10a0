"""Padded vs packed (padding-free) layouts on CPU: forward + backward throughput in REAL tokens/s and peak memory.

Each variant runs in its own subprocess (peak RSS is per process) on the same tiny random Llama (7.3M params,
vocab 8000, benchmarks/bench_train_trl.make_model) and the same bundled real HH-RLHF pairs, in sequential
micro-batches of `--batch` pairs, each cut into sub-batches under the token budget (`--budget`, default the CPU
default 1024: padded tokens for rows/shared, real tokens for packed) and forwarded + backpropagated one
sub-batch at a time, as the trainer does. Real tokens = prompt + response of every response (what TRL feeds,
so every layout is credited the same work); run tokens = the positions the model actually ran (padding
included; the shared layout runs each prompt once). Padding share = padded positions / run positions. TRL's
layout (each batch right-padded to its longest prompt+response) is computed from the same token counts.

    python benchmarks/bench_packing.py                       # 128 pairs, batch 8, 6 steps per variant
    python benchmarks/bench_packing.py --pairs 16 --steps 3  # a quick check

Prints ONE JSON line.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "training" / "hh_pairs.parquet"
sys.path.insert(0, str(ROOT))
from benchmarks import worker_runs  # noqa: E402

# name -> (train.layout, train.attention)
VARIANTS = {"rows": ("rows", "auto"), "shared": ("shared", "auto"), "packed_sdpa_mask": ("packed", "sdpa"),
            "packed_varlen": ("packed", "varlen")}


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def real_tokens(g) -> int:
    return sum(len(g.prompt_ids) + len(r) for r in g.response_ids)


def trl_padding_share(groups, batch: int) -> float:
    """TRL's DPO layout: 2 x batch rows per batch, each right-padded to the batch's longest prompt+response."""
    real = run = 0
    for i in range(0, len(groups), batch):
        part = groups[i:i + batch]
        rows = [len(g.prompt_ids) + len(r) for g in part for r in g.response_ids]
        real += sum(rows)
        run += len(rows) * max(rows)
    return 1 - real / run


def worker(model: str, data: str, variant: str, pairs: int, batch: int, max_length: int, budget: int,
           steps: int) -> dict:
    import torch

    from training.attention import set_attention
    from training.logps import SequenceLogps
    from training.packing import pack, split_by_tokens
    from training.run import load_model

    layout, attention = VARIANTS[variant]
    torch.manual_seed(0)
    lm, tok = load_model(model, trust_remote_code=False)
    impl = set_attention(lm, attention, layout=layout, device="cpu")
    groups = encode(tok, data, pairs, max_length)
    model_ = SequenceLogps(lm)
    batches = [groups[i:i + batch] for i in range(0, len(groups), batch)]
    rss_before = rss_mb()
    times, real, ran, pads, n_pairs = [], [], [], [], []
    for step in range(steps):
        part_groups = batches[step % len(batches)]
        t0 = time.perf_counter()
        n_run = n_pad = 0
        for part in split_by_tokens(part_groups, budget, layout):
            packed = pack([part_groups[i] for i in part], tok.pad_token_id, layout)
            n_run += packed.input_ids.numel()
            n_pad += packed.input_ids.numel() - packed.n_tokens
            out = model_(packed)
            (-out.sums.sum() / len(part_groups)).backward()
        times.append(time.perf_counter() - t0)
        real.append(sum(real_tokens(g) for g in part_groups))
        ran.append(n_run)
        pads.append(n_pad)
        n_pairs.append(len(part_groups))
        lm.zero_grad(set_to_none=True)
    return {"attention": impl, "step_times": times, "real_tokens": real, "run_tokens": ran, "pad_tokens": pads,
            "pairs_per_step": n_pairs, "rss_before_loop_mb": rss_before,
            "peak_rss_mb": rss_mb()}


def summarize(r: dict) -> dict:
    """Steady state: the steps after the first."""
    t = sum(r["step_times"][1:])
    real, ran, pad = (sum(r[k][1:]) for k in ("real_tokens", "run_tokens", "pad_tokens"))
    return {"attention": r["attention"], "real_tokens_per_s": real / t, "pairs_per_s": sum(r["pairs_per_step"][1:]) / t,
            "run_positions_per_s": ran / t, "padding_share": pad / ran, "peak_rss_mb": r["peak_rss_mb"],
            "rss_growth_in_loop_mb": r["peak_rss_mb"] - r["rss_before_loop_mb"]}


def encode(tok, data: str, pairs: int, max_length: int):
    import pyarrow.parquet as pq

    from training.encode import encode_groups
    t = pq.read_table(data).slice(0, pairs)
    return encode_groups(tok, t.column("prompt").to_pylist(),
                              [[c, r] for c, r in zip(t.column("chosen").to_pylist(),
                                                      t.column("rejected").to_pylist(), strict=True)],
                              max_length=max_length).groups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs="+")
    ap.add_argument("--pairs", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--budget", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--data", default=str(DATA))
    a = ap.parse_args()
    if a.worker:
        model, variant = a.worker[:2]
        print(json.dumps(worker(model, a.data, variant, a.pairs, a.batch, a.max_length, a.budget, a.steps)))
        return
    import torch

    from benchmarks.bench_train_trl import make_model
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "tiny-llama"
        make_model(model)
        common = ["--pairs", str(a.pairs), "--batch", str(a.batch), "--max-length", str(a.max_length),
                  "--budget", str(a.budget), "--steps", str(a.steps), "--data", a.data]
        res = {v: worker_runs.run_worker_or_raise(__file__, [str(model), v, *common]) for v in a.variants}
        from transformers import AutoTokenizer
        groups = encode(AutoTokenizer.from_pretrained(model), a.data, a.pairs, a.max_length)
    out = {"bench": "packing_cpu", "device": "cpu", "threads": torch.get_num_threads(), "pairs": len(groups),
           "batch": a.batch, "max_length": a.max_length, "token_budget": a.budget, "steps": a.steps,
           "model": "tiny random Llama 7.3M (vocab 8000)", "data": Path(a.data).name,
           "trl_layout_padding_share": trl_padding_share(groups, a.batch),
           "variants": {v: summarize(r) for v, r in res.items()}}
    base = out["variants"].get("rows")
    if base:
        for s in out["variants"].values():
            s["real_tokens_per_s_vs_rows"] = s["real_tokens_per_s"] / base["real_tokens_per_s"]
            s["peak_rss_vs_rows"] = s["peak_rss_mb"] / base["peak_rss_mb"]
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
