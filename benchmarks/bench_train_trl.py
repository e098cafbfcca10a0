"""Our trainer vs TRL's DPOTrainer on CPU, same model, same real pairs, same batch size and max length.

Each measurement runs in its own subprocess (peak RSS is per process). Prints ONE JSON line per comparison:
  {"bench": "train_pairs", ...}     DPO sigmoid, beta 0.1, batch 8, max_length 512, 7.3M-param random Llama
                                    (vocab 8000): pairs/s (steady state: steps after the first), peak RSS,
                                    first-step loss and mean chosen/rejected log-probs on the same 8 pairs
  {"bench": "train_listwise", ...}  K=4 ranked responses per prompt: our Plackett-Luce listwise step with the
                                    shared-prompt forward vs TRL on the 6 expanded pairs of each prompt (s/prompt)
Data: tests/data/training/arena_pairs.parquet / arena_lists.parquet (real arena-bench-v1 answers).
Usage: python benchmarks/bench_train_trl.py [--pairs 64] [--prompts 16]
"""
from __future__ import annotations

import argparse
import itertools
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "training"
sys.path.insert(0, str(ROOT))
from benchmarks import worker_runs  # noqa: E402
from benchmarks.worker_runs import steady  # noqa: E402

BATCH, MAX_LEN, BETA = 8, 512, 0.1


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_model(out: Path) -> None:
    import pyarrow.parquet as pq

    from training.tiny import make_tiny_model, texts_of_table
    texts = texts_of_table(pq.read_table(DATA / "arena_pairs.parquet")) + \
        texts_of_table(pq.read_table(DATA / "hh_pairs.parquet"))
    make_tiny_model(out, texts, vocab_size=8000, seed=0)


def expand_lists(path: Path, n: int, out: Path) -> None:
    """Every ordered (better, worse) pair of each prompt's 4 responses: 6 pairs per prompt (ties skipped)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    t = pq.read_table(path).slice(0, n)
    rows = []
    for r in t.to_pylist():
        for i, j in itertools.combinations(range(len(r["responses"])), 2):
            if r["scores"][i] == r["scores"][j]:
                continue
            rows.append({"prompt": r["prompt"], "chosen": r["responses"][i], "rejected": r["responses"][j]})
    pq.write_table(pa.Table.from_pylist(rows), out)


# -- workers (each in its own process) -----------------------------------------------------------------
def worker_ours(model: str, data: str, out: str, steps: int | None, loss: str) -> dict:
    import yaml

    from training.run import train_from_recipe
    recipe = {"model": model, "dataset": data, "loss": {"name": loss, "beta": BETA}, "output_dir": out,
              "reference": {"model": model},
              "train": {"batch_size": BATCH, "max_length": MAX_LEN, "lr": 5e-7, "warmup_ratio": 0.0, "seed": 0,
                        **({"max_steps": steps} if steps else {})}}
    p = Path(out + ".yaml")
    p.write_text(yaml.safe_dump(recipe))
    t0 = time.perf_counter()
    res = train_from_recipe(p)
    wall = time.perf_counter() - t0
    m = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return {"step_times": [x["step_time_s"] for x in m], "examples": [x["examples"] for x in m],
            "first_loss": m[0]["loss"], "first_logps_chosen": m[0].get("logps_chosen"),
            "first_logps_rejected": m[0].get("logps_rejected"), "rows": res["rows_trained"],
            "wall_s": wall, "peak_rss_mb": rss_mb()}


def worker_trl(model: str, data: str, out: str, steps: int | None, precompute: bool) -> dict:
    import datasets
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    t = pq.read_table(data).select(["prompt", "chosen", "rejected"])
    ds = datasets.Dataset(t)
    timer, times = worker_runs.step_timer()

    cfg = DPOConfig(output_dir=out, per_device_train_batch_size=BATCH, max_length=MAX_LEN, beta=BETA,
                    loss_type=["sigmoid"], learning_rate=5e-7, num_train_epochs=1, max_steps=steps or -1,
                    logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=False, seed=0,
                    precompute_ref_log_probs=precompute, dataloader_num_workers=0, disable_tqdm=True,
                    warmup_steps=0)
    trainer = DPOTrainer(model=lm, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[timer])
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {"step_times": times, "examples": [BATCH] * len(times), "first_loss": logs[0]["loss"],
            "first_logps_chosen": logs[0].get("logps/chosen"), "first_logps_rejected": logs[0].get("logps/rejected"),
            "rows": len(trainer.train_dataset), "wall_s": wall, "peak_rss_mb": rss_mb()}


def run_worker(*args: str) -> dict:
    return worker_runs.run_worker_or_raise(__file__, list(args))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", nargs="+")
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=24)
    a = ap.parse_args()
    if a.worker:
        kind, model, data, out, steps = a.worker[:5]
        steps_i = int(steps) or None
        if kind == "ours":
            r = worker_ours(model, data, out, steps_i, "dpo_sigmoid")
        elif kind == "ours_list":
            r = worker_ours(model, data, out, steps_i, "plackett_luce_dpo")
        else:
            r = worker_trl(model, data, out, steps_i, precompute=(kind == "trl_pre"))
        print(json.dumps(r))
        return
    import pyarrow.parquet as pq
    import torch
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / "tiny-llama"
        make_model(model)
        pairs = tmp / "pairs.parquet"
        pq.write_table(pq.read_table(DATA / "arena_pairs.parquet").slice(0, a.pairs), pairs)
        first8 = tmp / "first8.parquet"
        pq.write_table(pq.read_table(DATA / "arena_pairs.parquet").slice(0, BATCH), first8)
        n_params = sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(
            model).parameters())
        res = {}
        for kind in ("ours", "trl", "trl_pre"):
            res[kind] = run_worker(kind, str(model), str(pairs), str(tmp / kind), "0")
            res[kind + "_parity"] = run_worker(kind, str(model), str(first8), str(tmp / (kind + "_p")), "1")
        best_trl = max(("trl", "trl_pre"), key=lambda k: steady(res[k]))
        out = {"bench": "train_pairs", "device": "cpu", "threads": torch.get_num_threads(),
               "model_params": n_params, "pairs": a.pairs, "batch": BATCH, "max_length": MAX_LEN,
               "ours_pairs_per_s": steady(res["ours"]), "trl_pairs_per_s": steady(res["trl"]),
               "trl_precompute_pairs_per_s": steady(res["trl_pre"]),
               "speedup_vs_best_trl": steady(res["ours"]) / steady(res[best_trl]),
               "ours_peak_rss_mb": res["ours"]["peak_rss_mb"], "trl_peak_rss_mb": res["trl"]["peak_rss_mb"],
               "trl_precompute_peak_rss_mb": res["trl_pre"]["peak_rss_mb"],
               "rss_ratio_vs_trl_fast_setting": res["ours"]["peak_rss_mb"] / res[best_trl]["peak_rss_mb"],
               "first_step": {k: {f: res[k + "_parity"][f] for f in
                                  ("first_loss", "first_logps_chosen", "first_logps_rejected")}
                              for k in ("ours", "trl", "trl_pre")},
               "first_loss_abs_diff": abs(res["ours_parity"]["first_loss"] - res["trl_parity"]["first_loss"]),
               "first_logps_chosen_abs_diff": abs(res["ours_parity"]["first_logps_chosen"]
                                                  - res["trl_parity"]["first_logps_chosen"]),
               "wall_s": {k: res[k]["wall_s"] for k in ("ours", "trl", "trl_pre")}}
        print(json.dumps(out), flush=True)

        lists = tmp / "lists.parquet"
        pq.write_table(pq.read_table(DATA / "arena_lists.parquet").slice(0, a.prompts), lists)
        expanded = tmp / "expanded.parquet"
        expand_lists(DATA / "arena_lists.parquet", a.prompts, expanded)
        ol = run_worker("ours_list", str(model), str(lists), str(tmp / "ol"), "0")
        tl = run_worker("trl_pre", str(model), str(expanded), str(tmp / "tl"), "0")
        n_exp = pq.read_metadata(expanded).num_rows
        # per prompt: our step time / prompts in the step; TRL: its pairs/s -> seconds for that prompt's pairs
        ours_s = sum(ol["step_times"][1:]) / max(1, sum(ol["examples"][1:]))
        trl_s = (n_exp / a.prompts) / steady(tl)
        print(json.dumps({"bench": "train_listwise", "device": "cpu", "K": 4, "prompts": a.prompts,
                          "expanded_pairs": n_exp, "ours_s_per_prompt": ours_s,
                          "trl_s_per_prompt_on_expanded_pairs": trl_s, "speedup": trl_s / ours_s,
                          "ours_peak_rss_mb": ol["peak_rss_mb"], "trl_peak_rss_mb": tl["peak_rss_mb"]}), flush=True)


if __name__ == "__main__":
    main()
