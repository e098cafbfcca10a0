"""Code tests scorer: each response's code runs against each of the row's tests in the sandbox
(builders/sandbox.py); the score is the fraction of tests passed. Every run's outcome is counted by
status and containment event (timeouts, fork bombs, memory blow-ups, writes outside the dir, network
attempts) in the step info, so hostile or broken candidates are reported, not just scored 0.

A test is a Python snippet (asserts) executed after the solution in one process; the test passes when the
process exits 0 within the limits."""
from __future__ import annotations

import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from builders import sandbox
from builders.base import StepConfig, StepContext
from builders.scorers import Scored, need_columns

_FENCE = re.compile(r"```(?:python|py|Python)?[ \t]*\n(.*?)```", re.S)


class SandboxLimits(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    wall_s: float = Field(5.0, gt=0)
    cpu_s: int = Field(3, ge=1)
    memory_mb: int = Field(512, ge=32)
    nproc: int = Field(16, ge=1)

    def limits(self) -> sandbox.Limits:
        return sandbox.Limits(wall_s=self.wall_s, cpu_s=self.cpu_s, memory_mb=self.memory_mb, nproc=self.nproc)


class CodeTestsScorer(StepConfig, frozen=True):
    kind: Literal["code_tests"]
    name: str
    tests_column: str = "tests"              # list<string>: one test snippet per element
    limits: SandboxLimits = SandboxLimits()
    workers: int = Field(2, ge=1)            # sandboxes run in parallel


def extract_code(text: str) -> str:
    """The code of a response: its fenced code blocks joined, or the whole text when it has none."""
    blocks = _FENCE.findall(text or "")
    return "\n\n".join(b.strip("\n") for b in blocks) if blocks else (text or "")


def run_matrix(codes: list[str], tests: list[str], limits: sandbox.Limits, workers: int
               ) -> tuple[np.ndarray, list[list[sandbox.RunResult]]]:
    """Run every code against every test: pass matrix A (codes x tests, 1 = passed) and the results."""
    jobs = [(i, j) for i in range(len(codes)) for j in range(len(tests))]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda ij: sandbox.run_python(codes[ij[0]] + "\n\n" + tests[ij[1]], limits=limits),
                                jobs))
    a = np.zeros((len(codes), len(tests)))
    grid: list[list[sandbox.RunResult]] = [[None] * len(tests) for _ in codes]  # type: ignore[list-item]
    for (i, j), r in zip(jobs, results, strict=True):
        a[i, j] = float(r.ok)
        grid[i][j] = r
    return a, grid


def tally(grid: list[list[sandbox.RunResult]]) -> dict:
    status = Counter(r.status for row in grid for r in row)
    events = Counter(e for row in grid for r in row for e in r.events)
    return {"runs": sum(status.values()), "status": dict(status), "events": dict(events)}


def score(df: pl.DataFrame, cfg: CodeTestsScorer, ctx: StepContext) -> Scored:
    need_columns(df, ["response", cfg.tests_column], cfg.name)
    limits = cfg.limits.limits()
    values = np.full(df.height, np.nan)
    reasons: list[str | None] = [None] * df.height
    status: Counter = Counter()
    events: Counter = Counter()
    cases: list[dict] = []
    from builders.backends import progress_bar
    with progress_bar(df.height, f"code tests {cfg.name}", ctx.progress) as advance:
        for i, (resp, tests) in enumerate(zip(df["response"].to_list(), df[cfg.tests_column].to_list(), strict=True)):
            if not tests:
                reasons[i] = f"code_tests {cfg.name}: row has no tests"
            else:
                a, grid = run_matrix([extract_code(resp)], list(tests), limits, cfg.workers)
                values[i] = a.mean()
                t = tally(grid)
                status.update(t["status"])
                events.update(t["events"])
                bad = [r for r in grid[0] if r.events]
                if bad and len(cases) < 50:
                    cases.append({"row": i, "events": sorted({e for r in bad for e in r.events})})
            advance(1)
    return Scored(values, reasons, {"status": dict(status), "events": dict(events), "contained_cases": cases})
