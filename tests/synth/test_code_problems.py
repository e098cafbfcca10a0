"""The bundled code problems (examples/data/code_problems.jsonl): every reference solution passes every one
of its tests in the sandbox, and a plainly wrong candidate does not (the tests actually test something)."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from builders.base import StepContext
from builders.score import ScoreConfig, build_score

PROBLEMS = Path(__file__).resolve().parents[2] / "examples" / "data" / "code_problems.jsonl"


def test_reference_solutions_pass_their_tests_and_stubs_fail(tmp_path):
    rows = [json.loads(line) for line in PROBLEMS.read_text().splitlines()]
    assert len(rows) >= 8 and all(len(r["tests"]) >= 4 for r in rows)
    # one sandbox run per candidate: all of a problem's tests joined into one test
    frame = pl.LazyFrame({
        "prompt_id": [r["task_id"] for r in rows] * 2, "prompt": [r["prompt"] for r in rows] * 2,
        "response_id": [f"{r['task_id']}-ref" for r in rows] + [f"{r['task_id']}-stub" for r in rows],
        "response": [r["reference_solution"] for r in rows] + [
            f"def {r['entry_point']}(*args, **kwargs):\n    return None" for r in rows],
        "tests": [["\n".join(r["tests"])] for r in rows] * 2})
    cfg = ScoreConfig.model_validate({"scorers": [{"kind": "code_tests", "name": "t", "workers": 2,
                                                   "limits": {"wall_s": 20, "cpu_s": 10}}]})
    out = build_score(frame, cfg, StepContext(base_dir=tmp_path, progress=False)).frame.collect()
    passed = dict(zip(out["response_id"], out["scores"].struct.field("t"), strict=True))
    assert all(passed[f"{r['task_id']}-ref"] == 1.0 for r in rows), passed
    assert all(passed[f"{r['task_id']}-stub"] == 0.0 for r in rows), passed
