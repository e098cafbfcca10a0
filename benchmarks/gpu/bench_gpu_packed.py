"""GPU: the packed (padding-free) layout + the fused bf16 stochastic-rounding AdamW vs TRL's DPOTrainer, aiming at
issue 17's "both goals in one configuration": >= 2x TRL tokens/s AND <= 0.6x TRL peak memory, MFU >= 25 %.

Same model shape and data as bench_gpu.py (Qwen2-0.5B shape, random init, bf16 compute, DPO sigmoid beta 0.1,
batch 8 pairs, max_length 512, the 64 real arena pairs; its workers, one subprocess per run). Tokens are REAL
tokens (prompt+chosen and prompt+rejected as TRL feeds them, no padding) for both trainers; MFU = 6 x params x
real tokens/s / peak dense bf16 FLOP/s. Before the timed runs, two correctness checks on the device:
  varlen   packed-layout log-probs (torch's varlen FlashAttention, and flex attention) vs the padded rows layout,
           tiny random Llama, bf16 autocast: max |diff| of the summed and per-token log-probs
  sr_adamw the compiled SR AdamW vs the bucketed one on the model's parameter shapes (bf16): values that differ
           after 3 steps with the same noise (and by how many bf16 ulps), and the step time of each (picks
           training/sr_adamw.AUTO_SR_IMPL[cuda])
Needs torch (CUDA), transformers, accelerate, pyarrow, pydantic, pyyaml, rich; TRL + datasets from carried
wheels (benchmarks/gpu/README.md). Prints ONE JSON line; `--out-dir` (default $OUT) gets results.json after every
run, so a cut-short call keeps what finished.

    python3 benchmarks/gpu/bench_gpu_packed.py --trl-path /tmp/site --out-dir $OUT          # ~4-6 min on an H200
    python3 benchmarks/gpu/bench_gpu_packed.py --checks-only                                # the two checks
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
import bench_gpu  # noqa: E402

# ours: the candidate for both goals first (packed + fused SR AdamW + checkpointing, small LM-head chunks so the
# head buffers fit the memory goal), then what isolates each change
OURS = ["layout=packed,weights=bf16,sr=compiled,ckpt=1,chunk=256",
        "layout=packed,weights=bf16,sr=compiled,ckpt=0,chunk=256",
        "layout=packed,weights=bf16,sr=bucketed,ckpt=1,chunk=256",
        "layout=rows,weights=bf16,sr=bucketed,ckpt=1"]
GOALS = {"tokens_per_s_ratio": 2.0, "peak_mem_ratio": 0.6, "mfu": 0.25}


def check_varlen(device: str) -> dict:
    """Packed (varlen, flex) vs rows log-probs on a tiny random Llama, forward + backward, bf16 autocast."""
    import torch

    from training.attention import set_attention
    from training.encode import Group
    from training.logps import SequenceLogps
    from training.packing import pack
    from training.tiny import tiny_llama

    g = torch.Generator().manual_seed(0)

    def ids(n):
        return torch.randint(3, 500, (n,), generator=g).tolist()
    groups = [Group(row=i, prompt_ids=ids(int(torch.randint(5, 120, (1,), generator=g))),
                    response_ids=[ids(int(torch.randint(3, 200, (1,), generator=g))) for _ in range(2)])
              for i in range(8)]
    out = {}
    for impl in ("varlen", "flex_attention"):
        lm = tiny_llama(512, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2).to(device)
        model = SequenceLogps(lm)
        try:
            with torch.autocast(device, torch.bfloat16):
                rows = model(pack(groups, 0, "rows").to(device), True)
                rows.sums.sum().backward()
                g_rows = lm.model.layers[0].self_attn.q_proj.weight.grad.clone()
                lm.zero_grad()
                set_attention(lm, impl, layout="packed", device=device)
                t0 = time.perf_counter()
                packed = model(pack(groups, 0, "packed").to(device), True)
                packed.sums.sum().backward()
                g_packed = lm.model.layers[0].self_attn.q_proj.weight.grad
            packed, rows = (SimpleNamespace(sums=o.sums.detach(), tokens=o.tokens.detach()) for o in (packed, rows))
            out[impl] = {"max_abs_diff_sums": float((packed.sums - rows.sums).abs().max()),
                         "mean_abs_sum": float(rows.sums.abs().mean()),
                         "max_abs_diff_token_logps": float((packed.tokens - rows.tokens).abs().max()),
                         "grad_rel_diff": float((g_packed - g_rows).norm() / g_rows.norm()),
                         "first_call_s": time.perf_counter() - t0}
        except Exception as e:   # reported, not fatal: the training runs still run
            out[impl] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}
    return out


def check_sr_adamw(device: str, shape: str, steps: int = 3, timed: int = 5) -> dict:
    """Compiled vs bucketed SR AdamW on the model's parameter shapes (bf16): agreement and step time."""
    import torch

    from training.sr_adamw import StochasticRoundingAdamW
    cfg = bench_gpu.SHAPES[shape]
    h, inter, kv = cfg["hidden_size"], cfg["intermediate_size"], cfg["hidden_size"] // cfg["num_attention_heads"] \
        * cfg["num_key_value_heads"]
    layer = [(h, h), (h,), (kv, h), (kv,), (kv, h), (kv,), (h, h), (inter, h), (inter, h), (h, inter), (h,), (h,)]
    shapes = [(cfg["vocab_size"], h), (h,)] + layer * cfg["num_hidden_layers"]
    torch.manual_seed(0)
    init = [torch.randn(s, device=device, dtype=torch.bfloat16) * 0.02 for s in shapes]
    res, params, opts = {}, {}, {}
    for impl in ("bucketed", "compiled"):
        params[impl] = [t.clone().requires_grad_() for t in init]
        opts[impl] = StochasticRoundingAdamW(params[impl], lr=1e-6, weight_decay=0.01, seed=0, impl=impl)
    gen = torch.Generator(device=device).manual_seed(1)
    for _ in range(steps):   # the same gradients for both
        grads = [torch.randn(s, device=device, dtype=torch.bfloat16, generator=gen) * 1e-3 for s in shapes]
        for impl in params:
            for p, gr in zip(params[impl], grads, strict=True):
                p.grad = gr
            opts[impl].step()
    n = sum(t.numel() for t in init)
    for name, of in (("weights", lambda o, p: p), ("exp_avg", lambda o, p: o.state[p]["exp_avg"]),
                     ("exp_avg_sq", lambda o, p: o.state[p]["exp_avg_sq"])):
        differ, ulps, scaled = 0, 0, 0.0
        for p, q in zip(params["bucketed"], params["compiled"], strict=True):
            a, b = of(opts["bucketed"], p).detach(), of(opts["compiled"], q).detach()
            d = a != b
            differ += int(d.sum())
            if d.any():   # ulps mislead near 0 (a tiny value vs 0.0 is many ulps): also |diff| / max |value|
                ulps = max(ulps, int((a.view(torch.int16)[d].int() - b.view(torch.int16)[d].int()).abs().max()))
                scaled = max(scaled, float((a.float() - b.float()).abs().max() / a.float().abs().max()))
        res[f"{name}_values_differing"] = differ
        res[f"{name}_max_bf16_ulps"] = ulps
        res[f"{name}_max_diff_over_max_value"] = scaled
    res["values"] = n
    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()
    for impl in ("bucketed", "compiled"):
        times = []
        for _ in range(timed):
            sync()
            t0 = time.perf_counter()
            opts[impl].step()
            sync()
            times.append(time.perf_counter() - t0)
        res[f"{impl}_step_s"] = sorted(times)[len(times) // 2]
    res["compiled_speedup"] = res["bucketed_step_s"] / res["compiled_step_s"]
    return res


def goals(summary: dict) -> dict:
    """Per run of ours: the issue's goals against TRL (precompute, its faster setting) in the same call."""
    out = {}
    for name, r in summary.items():
        if not (name.startswith("ours") and isinstance(r, dict) and "tokens_per_s" in r):
            continue
        speed = r.get("tokens_per_s_ratio_vs_best_trl")
        mem = r.get("peak_mem_ratio_vs_trl_precompute")
        mfu = r.get("mfu")
        out[name] = {"tokens_per_s_ratio": speed, "peak_mem_ratio": mem, "mfu": mfu,
                     "speed_goal": speed is not None and speed >= GOALS["tokens_per_s_ratio"],
                     "memory_goal": mem is not None and mem <= GOALS["peak_mem_ratio"],
                     "mfu_goal": mfu is not None and mfu >= GOALS["mfu"]}
        out[name]["both_goals"] = out[name]["speed_goal"] and out[name]["memory_goal"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(bench_gpu.SHAPES), default="qwen0.5b")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--ours", nargs="+", default=OURS, help="variants of ours (bench_gpu.py --ours syntax)")
    ap.add_argument("--trl", nargs="*", default=["trl_pre"], choices=sorted(bench_gpu.TRL_KINDS))
    ap.add_argument("--trl-path", default=None, help="directory with trl/datasets installed (pip --target)")
    ap.add_argument("--run-timeout", type=float, default=150.0, help="seconds per run; a slower run is reported")
    ap.add_argument("--out-dir", default=os.environ.get("OUT"))
    ap.add_argument("--checks-only", action="store_true", help="only the varlen and SR AdamW checks")
    ap.add_argument("--no-checks", action="store_true")
    a = ap.parse_args()
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    out_dir = Path(a.out_dir) if a.out_dir else None

    def save(partial: dict) -> None:
        if out_dir:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "results.json").write_text(json.dumps(partial, indent=1))

    result = {"bench": "train_gpu_packed", "device": gpu, "torch": torch.__version__, "goals": GOALS}
    if not a.no_checks:
        result["check_varlen"] = check_varlen(a.device) if a.device == "cuda" else "skipped (needs CUDA)"
        save(result)
        result["check_sr_adamw"] = check_sr_adamw(a.device, a.shape)
        save(result)
        if a.device == "cuda":   # the check's tensors are gone: hand their blocks back before the runs
            torch.cuda.empty_cache()
    if a.checks_only:
        print(json.dumps(result), flush=True)
        return
    peak = next((v for k, v in bench_gpu.PEAK_FLOPS.items() if k in gpu), None)
    args = SimpleNamespace(shape=a.shape, batch=a.batch, max_length=a.max_length, steps=a.steps, ours=a.ours,
                           trl=a.trl)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / "model"
        n_params = bench_gpu.make_model(model, a.shape)
        tpp = bench_gpu.trl_tokens_per_pair(str(model), str(bench_gpu.DATA), a.max_length)
        runs = [(f"ours[{a.ours[0]}]", "ours", a.ours[0])] + [(k, k, "") for k in a.trl] + \
            [(f"ours[{v}]", "ours", v) for v in a.ours[1:]]
        res = {}
        for name, kind, variant in runs:
            slug = "".join(c if c.isalnum() else "_" for c in name)
            res[name] = bench_gpu.run_worker([kind, str(model), str(bench_gpu.DATA), str(tmp / slug), str(a.steps),
                                              str(a.batch), str(a.max_length), a.device, "--variant", variant],
                                             a.trl_path, a.run_timeout)
            summary = bench_gpu.summarize(res, args, n_params, tpp, peak, gpu)
            result.update(train=summary, goals_met=goals(summary))
            print(f"[bench_gpu_packed] {name}: {json.dumps(summary.get(name))}", file=sys.stderr, flush=True)
            save(result)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
