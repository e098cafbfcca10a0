"""Regenerate the trainer test data from the bundled real samples (examples/data). Run from the repo root:
    python tests/data/training/make_data.py
hh_pairs.parquet:     the first 128 HH-RLHF harmless-base test pairs; prompt = shared dialogue prefix up to and
                      including the last "\\n\\nAssistant:", chosen/rejected = the differing final turns (MIT).
arena_pairs.parquet:  64 arena-bench-v1 prompts, best vs worst GPT-4-scored answer (margin > 0), stage 0/1/2 by
                      margin tertile, large margin first (Curry-DPO "easy first") (Apache-2.0).
arena_lists.parquet:  the same 64 prompts, 4 answers each (ranks 1,3,5,7 of the 7 by score), best first.
No text is edited; only split, selected and joined."""
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[3]
OUT = Path(__file__).resolve().parent
SRC = ROOT / "examples" / "data"


def sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def hh():
    rows = []
    with open(SRC / "hh_rlhf_harmless_base_test_first1000.jsonl") as f:
        for line in f:
            r = json.loads(line)
            c, j = r["chosen"], r["rejected"]
            i = 0
            while i < min(len(c), len(j)) and c[i] == j[i]:
                i += 1
            cut = c.rfind("\n\nAssistant:", 0, i + 1)
            if cut < 0:
                continue
            cut += len("\n\nAssistant:")
            p, ch, rj = c[:cut], c[cut:], j[cut:]
            if not ch.strip() or not rj.strip() or ch == rj:
                continue
            rows.append({"prompt_id": sha(p), "prompt": p, "chosen": ch, "rejected": rj, "chosen_id": sha(p + ch),
                         "rejected_id": sha(p + rj), "score_chosen": None, "score_rejected": None, "margin": None,
                         "weight": 1.0, "stage": 0, "strategy": "given"})
            if len(rows) == 128:
                break
    return rows


def arena():
    pairs, lists = [], []
    with open(SRC / "arena_bench_v1_7way_scored.jsonl") as f:
        for line in f:
            r = json.loads(line)
            comps = sorted([c for c in r["completions"] if c["score"] is not None], key=lambda c: -c["score"])
            if len(comps) < 7 or comps[0]["score"] == comps[-1]["score"]:
                continue
            p = r["prompt"]
            best, worst = comps[0], comps[-1]
            pairs.append({"prompt_id": r["question_id"], "prompt": p, "chosen": best["response"],
                          "rejected": worst["response"], "chosen_id": best["answer_id"],
                          "rejected_id": worst["answer_id"], "score_chosen": float(best["score"]),
                          "score_rejected": float(worst["score"]),
                          "margin": float(best["score"] - worst["score"]), "weight": 1.0, "stage": 0,
                          "strategy": "best_vs_worst"})
            four = [comps[i] for i in (0, 2, 4, 6)]
            scores = [float(c["score"]) for c in four]
            ranks = [1 + sum(t > s for t in scores) for s in scores]
            lists.append({"prompt_id": r["question_id"], "prompt": p, "responses": [c["response"] for c in four],
                          "response_ids": [c["answer_id"] for c in four], "scores": scores, "ranks": ranks})
            if len(pairs) == 64:
                break
    order = sorted(range(len(pairs)), key=lambda i: (-pairs[i]["margin"], -pairs[i]["score_chosen"], i))
    for k, i in enumerate(order):
        pairs[i]["stage"] = k * 3 // len(order)
    return pairs, lists


def write(rows, name, schema):
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), OUT / name)


PAIRS = pa.schema([("prompt_id", pa.string()), ("prompt", pa.string()), ("chosen", pa.string()),
                   ("rejected", pa.string()), ("chosen_id", pa.string()), ("rejected_id", pa.string()),
                   ("score_chosen", pa.float64()), ("score_rejected", pa.float64()), ("margin", pa.float64()),
                   ("weight", pa.float64()), ("stage", pa.int32()), ("strategy", pa.string())])
LISTS = pa.schema([("prompt_id", pa.string()), ("prompt", pa.string()), ("responses", pa.list_(pa.string())),
                   ("response_ids", pa.list_(pa.string())), ("scores", pa.list_(pa.float64())),
                   ("ranks", pa.list_(pa.int32()))])

if __name__ == "__main__":
    write(hh(), "hh_pairs.parquet", PAIRS)
    p, lst = arena()
    write(p, "arena_pairs.parquet", PAIRS)
    write(lst, "arena_lists.parquet", LISTS)
