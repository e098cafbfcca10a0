"""GPU benchmark: our trainer vs TRL's DPOTrainer on a Qwen2-0.5B-shaped random-init model, bf16 autocast.

Runs on a machine with only torch/transformers/accelerate/peft/pyarrow/numpy (no polars/duckdb/lance): our
trainer reads a parquet file; TRL (+ datasets) comes from carried wheels (see README.md in this folder).
Each trainer runs in its own subprocess. Prints ONE JSON line:
  pairs/s and tokens/s (steady state, steps after the first), peak GPU memory (max_memory_allocated),
  MFU = 6 * params * tokens/s / peak bf16 FLOP/s, first-step loss of both.
Tokens are counted the way TRL feeds them (prompt+chosen and prompt+rejected, truncated to max_length) for
both trainers so tokens/s compare like for like; ours also reports the tokens it actually ran (prompt once).

    python benchmarks/gpu/bench_gpu.py                      # Qwen2-0.5B shape on the GPU
    python benchmarks/gpu/bench_gpu.py --shape tiny --device cpu --steps 3    # end-to-end check on a CPU
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "training" / "arena_pairs.parquet"
sys.path.insert(0, str(ROOT))
from benchmarks import worker_runs  # noqa: E402
from benchmarks.worker_runs import steady  # noqa: E402

SHAPES = {
    # Qwen2-0.5B: 24 layers, d=896, ffn 4864, 14 heads / 2 KV heads, vocab 151936, tied embeddings (~494M)
    "qwen0.5b": {"vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                 "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768,
                 "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True},
    "tiny": {"vocab_size": 8192, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
             "tie_word_embeddings": True},
}
PEAK_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}  # dense bf16


def make_model(out: Path, shape: str) -> int:
    import pyarrow.parquet as pq
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from training.tiny import texts_of_table, train_tokenizer
    tok = train_tokenizer(texts_of_table(pq.read_table(DATA)), vocab_size=8000)
    cfg = Qwen2Config(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      **SHAPES[shape])
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def trl_tokens_per_pair(model: str, data: str, max_length: int) -> float:
    """Mean tokens per pair as TRL feeds them: len(prompt+chosen+eos) + len(prompt+rejected+eos), truncated."""
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from training.data import build_train_data
    tok = AutoTokenizer.from_pretrained(model)
    d = build_train_data(pq.read_table(data), tok, max_length=max_length)
    n = [2 * len(g.prompt_ids) + sum(map(len, g.response_ids)) for g in d.groups]
    return sum(n) / len(n)


def _mem() -> float:
    import torch
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


VARIANT_KEYS = {"layout": ("auto", "shared", "rows", "packed"), "ckpt": ("0", "1"), "weights": ("fp32", "bf16"),
                "budget": None, "chunk": None,
                "attn": ("auto", "sdpa", "eager", "varlen", "flex_attention", "flash_attention_2"),
                "sr": ("auto", "bucketed", "compiled")}


def parse_variant(spec: str) -> dict:
    """`layout=rows,ckpt=1,weights=bf16,budget=4096` -> our trainer's settings (unset keys: recipe defaults)."""
    out = {"layout": "auto", "ckpt": "0", "weights": "fp32", "budget": "auto", "chunk": "auto", "attn": "auto",
           "sr": "auto"}
    for part in filter(None, spec.split(",")):
        k, _, v = part.partition("=")
        if k not in VARIANT_KEYS or (VARIANT_KEYS[k] and v not in VARIANT_KEYS[k]):
            raise SystemExit(f"bad variant part {part!r}; keys {sorted(VARIANT_KEYS)}")
        out[k] = v
    return out


def worker_ours(model, data, out, steps, batch, max_length, device, variant: str, profile_dir: str | None = None) -> dict:
    import yaml

    from training import loop
    from training.run import train_from_recipe
    v = parse_variant(variant)
    recipe = {"model": model, "dataset": data, "loss": {"name": "dpo_sigmoid", "beta": 0.1}, "output_dir": out,
              "reference": {"model": model},
              "train": {"batch_size": batch, "max_length": max_length, "lr": 1e-6, "warmup_ratio": 0.0,
                        "max_steps": steps, "seed": 0, "mixed_precision": "bf16" if device == "cuda" else "no",
                        "token_budget": auto_or_int(v["budget"]), "grad_checkpointing": v["ckpt"] == "1",
                        "layout": v["layout"], "master_weights": v["weights"], "attention": v["attn"],
                        "logp_chunk": auto_or_int(v["chunk"]),
                        **({"sr_adamw": v["sr"]} if v["weights"] == "bf16" else {})}}
    p = Path(out + ".yaml")
    p.write_text(yaml.safe_dump(recipe))
    # benchmark only: skip the end-of-run checkpoint (model + AdamW state, ~6 GB for this shape) and final model
    # writes, which TRL is told to skip too (save_strategy "no"); they are outside the timed steps either way
    loop.StepLoop.save = lambda self, step, last: None
    loop.Trainer.save_final = lambda self, final: None
    prof = _profiler(profile_dir, steps) if profile_dir else None
    if prof is not None:
        step_hook = loop.Trainer.before_step

        def before_step(self, step):
            prof.step()
            step_hook(self, step)
        loop.Trainer.before_step = before_step
        prof.start()
    train_from_recipe(p)
    if prof is not None:
        prof.step()
        prof.stop()
        _write_profile(prof, Path(profile_dir), variant)
    m = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return {"step_times": [x["step_time_s"] for x in m], "examples": [x["examples"] for x in m],
            "tokens_run": [x["tokens"] for x in m], "first_loss": m[0]["loss"], "peak_mem_mb": _mem()}


def _profiler(profile_dir: str, steps: int):
    """torch.profiler over steps 3..steps-1 (after warm-up), CPU + CUDA activity."""
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    active = max(1, steps - 3)
    return profile(activities=acts, schedule=schedule(wait=2, warmup=1, active=active, repeat=1))


def _write_profile(prof, out_dir: Path, variant: str) -> None:
    """Top ops by device and by CPU self time, and how busy the device was over the profiled steps' wall time."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ka = prof.key_averages()
    # us, kernels (and memcpys) summed over the active steps; the ProfilerStep ranges' own "device time" is the
    # span of their kernels, not work, so they are left out
    dev = sum(e.self_device_time_total for e in ka if not e.key.startswith("ProfilerStep"))
    events = [e for e in prof.events() if e.name.startswith("ProfilerStep")]
    wall = sum(e.cpu_time_total for e in events)  # us
    text = [f"variant {variant}: profiled steps {len(events)}, wall {wall / 1e3:.1f} ms, device self time "
            f"{dev / 1e3:.1f} ms ({100 * dev / wall if wall else float('nan'):.0f}% busy)",
            ka.table(sort_by="self_device_time_total", row_limit=30, max_name_column_width=70),
            ka.table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=70)]
    (out_dir / f"profile_{variant.replace(',', '_').replace('=', '-') or 'default'}.txt").write_text("\n\n".join(text))


def auto_or_int(v: str) -> int | None:
    return None if v in ("auto", "None", "") else int(v)


def worker_trl(model, data, out, steps, batch, max_length, device, precompute, bf16_weights=False) -> dict:
    import datasets
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16 if bf16_weights else torch.float32)
    ds = datasets.Dataset(pq.read_table(data).select(["prompt", "chosen", "rejected"]))
    timer, times = worker_runs.step_timer()

    cfg = DPOConfig(output_dir=out, per_device_train_batch_size=batch, max_length=max_length, beta=0.1,
                    loss_type=["sigmoid"], learning_rate=1e-6, max_steps=steps, logging_steps=1,
                    save_strategy="no", report_to=[], use_cpu=device == "cpu", bf16=device == "cuda", seed=0,
                    precompute_ref_log_probs=precompute, dataloader_num_workers=0, disable_tqdm=True,
                    warmup_steps=0)
    trainer = DPOTrainer(model=lm, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[timer])
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {"step_times": times, "examples": [batch] * len(times), "first_loss": logs[0]["loss"],
            "peak_mem_mb": _mem()}


def run_worker(args: list[str], extra_path: str | None, timeout: float | None = None) -> dict:
    return worker_runs.run_worker(__file__, args, extra_path=extra_path, timeout=timeout)


TRL_KINDS = {"trl_pre": "TRL, precompute_ref_log_probs, fp32 weights + bf16 autocast (its documented bf16=True)",
             "trl": "TRL, online reference, fp32 weights + bf16 autocast",
             "trl_pre_bf16w": "TRL, precompute, model loaded in bf16 (plain bf16 AdamW: no fp32 copy anywhere)"}


def summarize(res: dict, a, n_params: int, tpp: float, peak: float | None, gpu: str) -> dict:
    out = {"bench": "train_gpu", "device": gpu, "shape": a.shape, "params": n_params, "batch": a.batch,
           "max_length": a.max_length, "steps": a.steps, "trl_tokens_per_pair": tpp, "ours_variants": a.ours,
           "trl_settings": {k: TRL_KINDS[k] for k in a.trl}}
    for k, r in res.items():
        if "error" in r:
            out[k] = r
            continue
        pps = steady(r)
        out[k] = {"pairs_per_s": pps, "tokens_per_s": pps * tpp, "peak_mem_mb": r["peak_mem_mb"],
                  "mfu": 6 * n_params * pps * tpp / peak if peak else None, "first_loss": r["first_loss"]}
        if "tokens_run" in r:
            out[k]["tokens_run_per_s"] = sum(r["tokens_run"][1:]) / sum(r["step_times"][1:])
    trls = [k for k in a.trl if "pairs_per_s" in out.get(k, {})]
    fp32_trls = [k for k in trls if k in ("trl_pre", "trl")]
    if fp32_trls:
        best = max(fp32_trls, key=lambda k: out[k]["pairs_per_s"])
        out["best_trl_setting"] = best
        for name in (n for n in res if n.startswith("ours") and "pairs_per_s" in out[n]):
            out[name]["tokens_per_s_ratio_vs_best_trl"] = out[name]["tokens_per_s"] / out[best]["tokens_per_s"]
            if "trl_pre" in trls and out[name]["peak_mem_mb"]:
                out[name]["peak_mem_ratio_vs_trl_precompute"] = out[name]["peak_mem_mb"] / out["trl_pre"]["peak_mem_mb"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", nargs="+")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen0.5b")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--trl-path", default=None, help="directory with trl/datasets installed (pip --target)")
    ap.add_argument("--ours", nargs="+", default=["layout=auto"],
                    help="our trainer's variants, each one run: comma-separated layout=auto|shared|rows|packed, ckpt=0|1 "
                         "(gradient checkpointing), weights=fp32|bf16 (train.master_weights), budget=auto|N, chunk=auto|N "
                         "(LM-head positions per chunk), attn=auto|sdpa|varlen|flex_attention|... (train.attention), "
                         "sr=auto|bucketed|compiled (train.sr_adamw, bf16 weights)")
    ap.add_argument("--trl", nargs="*", default=["trl_pre"], choices=sorted(TRL_KINDS), help="TRL settings to run")
    ap.add_argument("--profile", default=None, help="one more run of this variant of ours under torch.profiler")
    ap.add_argument("--out-dir", default=os.environ.get("OUT"), help="profile tables + results.json (default $OUT)")
    ap.add_argument("--run-timeout", type=float, default=None, help="seconds per run; a slower run is reported")
    ap.add_argument("--variant", default="", help=argparse.SUPPRESS)
    ap.add_argument("--profile-dir", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        kind, model, data, out, steps, batch, max_length, device = a.worker[:8]
        args = (model, data, out, int(steps), int(batch), int(max_length), device)
        r = worker_ours(*args, variant=a.variant, profile_dir=a.profile_dir) if kind == "ours" else \
            worker_trl(*args, precompute=kind != "trl", bf16_weights=kind == "trl_pre_bf16w")
        print(json.dumps(r))
        return
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    peak = next((v for k, v in PEAK_FLOPS.items() if k in gpu), None)
    out_dir = Path(a.out_dir) if a.out_dir else None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / "model"
        n_params = make_model(model, a.shape)
        tpp = trl_tokens_per_pair(str(model), str(DATA), a.max_length)
        common = [str(model), str(DATA)]
        # the first variant of ours, then TRL (so a cut-short call still has a ratio), then the other variants
        ours = [(f"ours[{v}]", "ours", v, None) for v in a.ours]
        runs = ours[:1] + [(k, k, "", None) for k in a.trl] + ours[1:]
        if a.profile is not None:
            runs.append((f"profile[{a.profile}]", "ours", a.profile, str(out_dir or tmp / "profile")))
        res = {}
        for name, kind, variant, prof_dir in runs:
            res[name] = run_worker([kind, *common, str(tmp / name.replace("[", "_").replace("]", "").replace(",", "_")),
                                    str(a.steps), str(a.batch), str(a.max_length), a.device,
                                    "--variant", variant, *(["--profile-dir", prof_dir] if prof_dir else [])],
                                   a.trl_path, a.run_timeout)
            partial = summarize(res, a, n_params, tpp, peak, gpu)
            print(f"[bench_gpu] {name}: {json.dumps(partial.get(name))}", file=sys.stderr, flush=True)
            if out_dir:
                out_dir.mkdir(parents=True, exist_ok=True)
                (out_dir / "results.json").write_text(json.dumps(partial, indent=1))
        print(json.dumps(summarize(res, a, n_params, tpp, peak, gpu)), flush=True)


if __name__ == "__main__":
    main()
