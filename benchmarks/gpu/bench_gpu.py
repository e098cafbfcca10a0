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


def worker_ours(model, data, out, steps, batch, max_length, device, token_budget=None, grad_ckpt=False,
                layout="auto") -> dict:
    import yaml

    from training.run import train_from_recipe
    recipe = {"model": model, "dataset": data, "loss": {"name": "dpo_sigmoid", "beta": 0.1}, "output_dir": out,
              "reference": {"model": model},
              "train": {"batch_size": batch, "max_length": max_length, "lr": 1e-6, "warmup_ratio": 0.0,
                        "max_steps": steps, "seed": 0, "mixed_precision": "bf16" if device == "cuda" else "no",
                        "token_budget": token_budget, "grad_checkpointing": grad_ckpt, "layout": layout}}
    p = Path(out + ".yaml")
    p.write_text(yaml.safe_dump(recipe))
    train_from_recipe(p)
    m = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return {"step_times": [x["step_time_s"] for x in m], "examples": [x["examples"] for x in m],
            "tokens_run": [x["tokens"] for x in m], "first_loss": m[0]["loss"], "peak_mem_mb": _mem()}


def parse_budget(v: str) -> int | None:
    return None if v in ("auto", "None", "") else int(v)


def worker_trl(model, data, out, steps, batch, max_length, device, precompute) -> dict:
    import datasets
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
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


def run_worker(args: list[str], extra_path: str | None) -> dict:
    return worker_runs.run_worker(__file__, args, extra_path=extra_path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", nargs="+")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen0.5b")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--trl-path", default=None, help="directory with trl/datasets installed (pip --target)")
    ap.add_argument("--skip-trl-online-ref", action="store_true", help="only TRL's precompute setting")
    ap.add_argument("--token-budget", default="auto", help="ours: padded tokens per sub-batch (auto: from free memory)")
    ap.add_argument("--grad-checkpointing", action="store_true", help="ours: gradient checkpointing (TRL's default)")
    ap.add_argument("--layout", nargs="+", default=["auto"], choices=["auto", "shared", "rows"],
                    help="ours: packing layout(s); several run ours once per layout in the same call")
    a = ap.parse_args()
    if a.worker:
        kind, model, data, out, steps, batch, max_length, device = a.worker[:8]
        args = (model, data, out, int(steps), int(batch), int(max_length), device)
        r = worker_ours(*args, token_budget=parse_budget(a.token_budget), grad_ckpt=a.grad_checkpointing,
                        layout=a.layout[0]) if kind == "ours" else worker_trl(*args, precompute=(kind == "trl_pre"))
        print(json.dumps(r))
        return
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    peak = next((v for k, v in PEAK_FLOPS.items() if k in gpu), None)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / "model"
        n_params = make_model(model, a.shape)
        tpp = trl_tokens_per_pair(str(model), str(DATA), a.max_length)
        common = [str(model), str(DATA)]
        res = {}
        runs = [(f"ours_{lay}" if len(a.layout) > 1 else "ours", "ours", lay) for lay in a.layout]
        runs += [(k, k, None) for k in ["trl_pre"] + ([] if a.skip_trl_online_ref else ["trl"])]
        for name, kind, lay in runs:
            res[name] = run_worker([kind, *common, str(tmp / name), str(a.steps), str(a.batch),
                                    str(a.max_length), a.device, "--token-budget", a.token_budget,
                                    *(["--layout", lay] if lay else []),
                                    *(["--grad-checkpointing"] if a.grad_checkpointing else [])], a.trl_path)
        out = {"bench": "train_gpu", "device": gpu, "shape": a.shape, "params": n_params, "batch": a.batch,
               "ours_token_budget": a.token_budget, "ours_layouts": a.layout, "ours_grad_checkpointing": a.grad_checkpointing,
               "max_length": a.max_length, "steps": a.steps, "trl_tokens_per_pair": tpp}
        for k, r in res.items():
            if "error" in r:
                out[k] = r
                continue
            pps = steady(r)
            out[k] = {"pairs_per_s": pps, "tokens_per_s": pps * tpp, "peak_mem_mb": r["peak_mem_mb"],
                      "mfu": 6 * n_params * pps * tpp / peak if peak else None, "first_loss": r["first_loss"]}
            if "tokens_run" in r:
                out[k]["tokens_run_per_s"] = sum(r["tokens_run"][1:]) / sum(r["step_times"][1:])
        trls = [k for k in ("trl_pre", "trl") if "pairs_per_s" in out.get(k, {})]
        for name in (n for n, kind, _ in runs if kind == "ours"):
            if "pairs_per_s" not in out[name] or not trls:
                continue
            best = max(trls, key=lambda k: out[k]["pairs_per_s"])
            sfx = name.removeprefix("ours")
            out["tokens_per_s_ratio_vs_best_trl" + sfx] = out[name]["tokens_per_s"] / out[best]["tokens_per_s"]
            out["peak_mem_ratio_vs_trl_precompute" + sfx] = (
                out[name]["peak_mem_mb"] / out["trl_pre"]["peak_mem_mb"]
                if "trl_pre" in trls and out[name]["peak_mem_mb"] else None)
            out["best_trl_setting"] = best
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
