"""Helpers for the ingest tests: paths to the bundled data and small writers for hand-made inputs."""
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "data"
DATA = REPO / "tests" / "data"
ARENA = EXAMPLES / "arena_bench_v1_7way_scored.jsonl"
HH = EXAMPLES / "hh_rlhf_harmless_base_test_first1000.jsonl"


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows may be dicts (dumped as JSON, NaN allowed) or raw bytes/str lines written as they are."""
    with open(path, "wb") as f:
        for r in rows:
            if isinstance(r, bytes):
                f.write(r + b"\n")
            elif isinstance(r, str):
                f.write(r.encode() + b"\n")
            else:
                f.write(json.dumps(r).encode() + b"\n")
    return path


def arena_row(qid: str, prompt: str, completions: list[tuple]) -> dict:
    """completions: (model, answer_id, response, score)."""
    return {"question_id": qid, "prompt": prompt,
            "completions": [{"model": m, "answer_id": a, "response": r, "score": s, "judgment": f"judged {a}"}
                            for m, a, r, s in completions]}


def hs2_row(prompt: str, response: str, h=3, c=3, co=3, cx=1, v=1) -> dict:
    return {"prompt": prompt, "response": response, "helpfulness": h, "correctness": c, "coherence": co,
            "complexity": cx, "verbosity": v}
