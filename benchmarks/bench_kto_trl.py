"""Our KTO vs TRL's KTOTrainer on CPU: same model, same real pairs trained unpaired, same examples per step.

Each trainer runs in its own subprocess (peak RSS is per process). Prints ONE JSON line:
  {"bench": "train_kto", ...}  KTO, beta 0.1, lambda_D = lambda_U = 1, 8 examples per step, max_length 512, the
                               7.3M-param random Llama of bench_train_trl.py: examples/s (steady state: steps after
                               the first), peak RSS, and on the same 4 pairs (8 examples) the first-step loss, z0 and
                               mean desirable/undesirable completion log-probs of both.
The unpaired expansion: each pair gives a desirable example (chosen) and an undesirable one (rejected).
  ours: `train_from_recipe` on the pairs file with `unpaired: {from_pairs: true}`, `batch_size: 4` (rows = pairs,
        so 8 examples per step, chosen and rejected of a row in one shared-prompt forward), `reference.model`
        (the reference pass stores the completions' and the KL samples' reference log-probs before training).
  TRL:  `unpair_preference_dataset` mapped in blocks of 4 pairs, so each sequential batch of 8 holds the same 4
        prompts' chosen and rejected answers as one of our steps (TRL's own default block of 1000 rows would make
        every batch all-desirable or all-undesirable); run with an online reference model and with
        `precompute_ref_log_probs`.
Data: tests/data/training/arena_pairs.parquet (real arena-bench-v1 answers).
The box is shared and CPU timings swing with its load: the 1-minute load average before and after is reported,
and `--repeats N` runs the three trainers N times, alternated, and reports the median (each run listed).
Usage: python benchmarks/bench_kto_trl.py [--pairs 32] [--repeats 1]
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
from benchmarks import worker_runs  # noqa: E402
from benchmarks.bench_train_trl import make_model, rss_mb  # noqa: E402
from benchmarks.worker_runs import steady  # noqa: E402

EXAMPLES, MAX_LEN, BETA, LR = 8, 512, 0.1, 5e-7
PAIRS_PER_STEP = EXAMPLES // 2  # one pair = one desirable + one undesirable example


# -- workers (each in its own process) -----------------------------------------------------------------
def worker_ours(model: str, data: str, out: str, steps: int | None) -> dict:
    import yaml

    from training.run import train_from_recipe
    recipe = {"model": model, "dataset": data, "output_dir": out,
              "loss": {"name": "kto", "beta": BETA, "lambda_D": 1.0, "lambda_U": 1.0},
              "unpaired": {"from_pairs": True}, "reference": {"model": model},
              "train": {"batch_size": PAIRS_PER_STEP, "max_length": MAX_LEN, "lr": LR, "warmup_ratio": 0.0,
                        "seed": 0, **({"max_steps": steps} if steps else {})}}
    p = Path(out + ".yaml")
    p.write_text(yaml.safe_dump(recipe))
    t0 = time.perf_counter()
    res = train_from_recipe(p)
    wall = time.perf_counter() - t0
    m = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    # the plan counts rows (pairs); each row is two KTO examples
    return {"step_times": [x["step_time_s"] for x in m], "examples": [2 * x["examples"] for x in m],
            "first_loss": m[0]["loss"], "first_z0": m[0].get("loss/kto_z0"),
            "first_logps_desirable": m[0].get("logps_desirable"),
            "first_logps_undesirable": m[0].get("logps_undesirable"),
            "rows": 2 * res["rows_trained"], "wall_s": wall, "peak_rss_mb": rss_mb()}


def unpaired_dataset(data: str):
    """TRL's own expansion, in blocks of PAIRS_PER_STEP pairs: [c0..c3, r0..r3], [c4..c7, r4..r7], ..."""
    import datasets
    import pyarrow.parquet as pq
    from trl.data_utils import unpair_preference_dataset
    ds = datasets.Dataset(pq.read_table(data).select(["prompt", "chosen", "rejected"]))
    return unpair_preference_dataset(ds, batch_size=PAIRS_PER_STEP)


def worker_trl(model: str, data: str, out: str, steps: int | None, precompute: bool) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import KTOConfig, KTOTrainer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    ref = None if precompute else AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    ds = unpaired_dataset(data)
    timer, times = worker_runs.step_timer()

    # TRL's defaults otherwise (gradient checkpointing on, fused LM head, sequential sampling: its KL samples
    # are the batch's completions rotated by one)
    cfg = KTOConfig(output_dir=out, per_device_train_batch_size=EXAMPLES, max_length=MAX_LEN, beta=BETA,
                    desirable_weight=1.0, undesirable_weight=1.0, loss_type="kto", learning_rate=LR,
                    num_train_epochs=1, max_steps=steps or -1, logging_steps=1, save_strategy="no", report_to=[],
                    use_cpu=True, bf16=False, seed=0, precompute_ref_log_probs=precompute,
                    dataloader_num_workers=0, disable_tqdm=True, warmup_steps=0)
    trainer = KTOTrainer(model=lm, ref_model=ref, args=cfg, train_dataset=ds, processing_class=tok,
                         callbacks=[timer])
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {"step_times": times, "examples": [EXAMPLES] * len(times), "first_loss": logs[0]["loss"],
            "first_z0": logs[0].get("kl"), "first_logps_desirable": logs[0].get("logps/chosen"),
            "first_logps_undesirable": logs[0].get("logps/rejected"), "rows": len(trainer.train_dataset),
            "wall_s": wall, "peak_rss_mb": rss_mb()}


def run_worker(*args: str) -> dict:
    return worker_runs.run_worker_or_raise(__file__, list(args))


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", nargs="+")
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    if a.worker:
        kind, model, data, out, steps = a.worker[:5]
        steps_i = int(steps) or None
        r = worker_ours(model, data, out, steps_i) if kind == "ours" else \
            worker_trl(model, data, out, steps_i, precompute=(kind == "trl_pre"))
        print(json.dumps(r))
        return
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / "tiny-llama"
        make_model(model)
        pairs = tmp / "pairs.parquet"
        pq.write_table(pq.read_table(DATA / "arena_pairs.parquet").slice(0, a.pairs), pairs)
        first = tmp / "first.parquet"
        pq.write_table(pq.read_table(DATA / "arena_pairs.parquet").slice(0, PAIRS_PER_STEP), first)
        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model).parameters())
        kinds = ("ours", "trl", "trl_pre")
        runs: dict[str, list[dict]] = {k: [] for k in kinds}
        for rep in range(a.repeats):  # alternated, so a burst of load hits every trainer alike
            for kind in kinds:
                runs[kind].append(run_worker(kind, str(model), str(pairs), str(tmp / f"{kind}{rep}"), "0"))
        parity = {k: run_worker(k, str(model), str(first), str(tmp / (k + "_p")), "1") for k in kinds}
        speed = {k: statistics.median(steady(r) for r in runs[k]) for k in kinds}
        rss = {k: statistics.median(r["peak_rss_mb"] for r in runs[k]) for k in kinds}
        best_trl = max(("trl", "trl_pre"), key=speed.get)
        fields = ("first_loss", "first_z0", "first_logps_desirable", "first_logps_undesirable")
        out = {"bench": "train_kto", "device": "cpu", "threads": torch.get_num_threads(), "model_params": n_params,
               "pairs": a.pairs, "examples": {k: runs[k][0]["rows"] for k in kinds}, "examples_per_step": EXAMPLES,
               "max_length": MAX_LEN, "beta": BETA, "repeats": a.repeats,
               "ours_examples_per_s": speed["ours"], "trl_examples_per_s": speed["trl"],
               "trl_precompute_examples_per_s": speed["trl_pre"],
               "speedup_vs_best_trl": speed["ours"] / speed[best_trl], "best_trl": best_trl,
               "ours_peak_rss_mb": rss["ours"], "trl_peak_rss_mb": rss["trl"], "trl_precompute_peak_rss_mb": rss["trl_pre"],
               "rss_ratio_vs_best_trl": rss["ours"] / rss[best_trl],
               "examples_per_s_each_run": {k: [steady(r) for r in runs[k]] for k in kinds},
               "first_step_same_8_examples": {k: {f: parity[k][f] for f in fields} for k in kinds},
               "first_logps_desirable_abs_diff": abs(parity["ours"]["first_logps_desirable"]
                                                     - parity["trl"]["first_logps_desirable"]),
               "first_logps_undesirable_abs_diff": abs(parity["ours"]["first_logps_undesirable"]
                                                       - parity["trl"]["first_logps_undesirable"]),
               "wall_s_each_run": {k: [r["wall_s"] for r in runs[k]] for k in kinds},
               "load_average_1m": {"before": load_before, "after": load_average()}}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
