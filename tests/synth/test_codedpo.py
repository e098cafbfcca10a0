"""CodeDPO: the spec §6(e) worked example, and the step on a real (tiny) problem through the sandbox."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from builders.base import StepContext
from builders.codedpo import CodeDPOConfig, build_codedpo, mutual_scores, parse_tests
from prefdata.schema import validate


def test_spec_worked_example():
    a = np.array([[1, 1, 1], [1, 1, 0], [0, 0, 1]], dtype=float)
    codes, tests, _ = mutual_scores(a, damping=0.85, tol=1e-12, max_iter=10_000)
    np.testing.assert_allclose(codes, [0.5, 0.366025, 0.133975], atol=1e-6)
    np.testing.assert_allclose(tests, [0.366025, 0.366025, 0.267949], atol=1e-6)
    assert codes.sum() == pytest.approx(1) and tests.sum() == pytest.approx(1)
    assert int(np.argmax(codes)) == 0 and int(np.argmin(codes)) == 2     # chosen code 0, rejected code 2


def test_a_test_no_code_passes_gets_zero_weight():
    a = np.array([[1, 0], [0, 0]], dtype=float)
    _, tests, _ = mutual_scores(a, tol=1e-12, max_iter=10_000)
    assert tests[1] == pytest.approx(0, abs=1e-9)


def test_parse_generated_tests():
    text = "Here:\n```python\nassert add(1, 2) == 3\n  assert add(0, 0) == 0\nprint('x')\n```"
    assert parse_tests(text) == ["assert add(1, 2) == 3", "assert add(0, 0) == 0"]


FAST = "def add(a, b):\n    return a + b"
SLOW = "import time\ndef add(a, b):\n    time.sleep(0.02)\n    return a + b"
WRONG = "def add(a, b):\n    return a - b"
TESTS = ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(1, 1) == 3"]   # the last one is wrong


def test_codedpo_step_correctness_then_efficiency_pairs():
    frame = pl.LazyFrame({
        "prompt_id": ["add"] * 4 + ["sub"] * 2 + ["one"],
        "prompt": ["Write add(a, b)."] * 4 + ["Write sub(a, b)."] * 2 + ["Write one()."],
        "response_id": ["fast", "slow", "wrong", "dup", "s1", "s2", "o1"],
        "response": [f"```python\n{FAST}\n```", SLOW, WRONG, FAST, "x", "y", "def one(): return 1"],
        "tests": [TESTS] * 4 + [[], []] + [["assert one() == 1"]]})
    cfg = CodeDPOConfig(repeats=3, limits={"wall_s": 10, "cpu_s": 2})
    b = build_codedpo(frame, cfg, StepContext(progress=False))
    out = b.frame.collect()
    validate(out.to_arrow(), "pairs")
    assert out.select("strategy", "chosen_id", "rejected_id", "stage").rows() == [
        ("codedpo_correctness", "fast", "wrong", 0), ("codedpo_efficiency", "fast", "slow", 1)]
    corr, eff = out.row(0, named=True), out.row(1, named=True)
    assert corr["pass_rate_chosen"] == pytest.approx(2 / 3) and corr["pass_rate_rejected"] == pytest.approx(1 / 3)
    assert corr["margin"] > 0 and eff["margin"] > 0.015           # slow sleeps 20 ms per call
    assert eff["seconds_rejected"] > eff["seconds_chosen"]
    assert b.drops == {"duplicate code (same prompt)": 1, "problem has no tests": 2,
                       "problem has < 2 distinct solutions": 1}
    assert b.rows_in == 7 and b.rows_kept == 3 and b.rows_in == b.rows_kept + sum(b.drops.values())
    assert b.info["zero_weight_tests"] == 1 and b.info["sandbox"]["runs"] == 9
