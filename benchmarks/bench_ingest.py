"""Ingest throughput on scaled copies of the bundled real data; prints one JSON line.

The arena file (200 prompts x 7 responses) and the HH-RLHF file (1000 pairs) are repeated COPIES times
with ids/prompts made unique per copy (so no duplicate-id errors), then read with read_source.
Usage: python benchmarks/bench_ingest.py [COPIES]   (default 20)"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prefdata.ingest import read_source  # noqa: E402

DATA = REPO / "examples" / "data"


def _scaled_arena(dst: Path, copies: int) -> None:
    rows = [json.loads(x) for x in (DATA / "arena_bench_v1_7way_scored.jsonl").read_text().splitlines()]
    with open(dst, "w") as f:
        for c in range(copies):
            for r in rows:
                comps = [{**x, "answer_id": f"{x['answer_id']}-{c}"} for x in r["completions"]]
                f.write(json.dumps({**r, "question_id": f"{r['question_id']}-{c}", "completions": comps}) + "\n")


def _scaled_hh(dst: Path, copies: int) -> None:
    rows = [json.loads(x) for x in (DATA / "hh_rlhf_harmless_base_test_first1000.jsonl").read_text().splitlines()]
    tag = "\n\nHuman:"
    with open(dst, "w") as f:
        for c in range(copies):
            for r in rows:   # make the first human turn unique per copy so pairs stay distinct
                f.write(json.dumps({k: v.replace(tag, f"{tag} [{c}]", 1) for k, v in r.items()}) + "\n")


def _time(path: Path, fmt: str) -> dict:
    t0 = time.perf_counter()
    res = read_source(path, format=fmt)
    dt = time.perf_counter() - t0
    mb = path.stat().st_size / 1e6
    return {"rows": res.rows_kept, "mb": round(mb, 1), "seconds": round(dt, 3),
            "rows_per_s": round(res.rows_kept / dt), "mb_per_s": round(mb / dt, 1)}


def main() -> None:
    copies = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    with tempfile.TemporaryDirectory() as tmp:
        arena, hh = Path(tmp) / "arena.jsonl", Path(tmp) / "hh.jsonl"
        _scaled_arena(arena, copies)
        _scaled_hh(hh, copies)
        out = {"bench": "ingest", "copies": copies, "arena": _time(arena, "arena"), "hh_rlhf": _time(hh, "hh-rlhf")}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
