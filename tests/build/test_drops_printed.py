"""Every drop is printed with its reason and count on the step's console line (`prefdata build`, a real
subprocess into a pipe): rank's unscored answer, and lists' rows beyond the top k, the prompt with too few answers
and the prompt whose top k all tie (counted in rows, and in prompts)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_build_prints_every_drop_reason_with_its_count(tmp_path):
    rows = [{"q": "A?", "a": f"a{i}", "s": s} for i, s in enumerate([5, 4, 3, 2, 1])]      # 1 beyond the top 4
    rows += [{"q": "B?", "a": f"b{i}", "s": 3} for i in range(4)]                         # top 4 one tie
    rows += [{"q": "C?", "a": f"c{i}", "s": s} for i, s in enumerate([3, 2, 1])]          # < 4 answers
    rows += [{"q": "A?", "a": "a-none", "s": None}]                                        # no score
    (tmp_path / "src.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "r.yaml").write_text("name: t\nsource: {path: src.jsonl, mapping: {prompt: q, response: a, score: s}}\n"
                                     "steps:\n  - rank: {by: score}\n  - lists: {k: 4}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, "-m", "prefdata", "build", "r.yaml", "--catalog", "cat"], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = {ln.split()[0]: " ".join(ln.split()[1:]) for ln in proc.stdout.splitlines() if ln.strip()}
    assert lines["source"] == "jsonl src.jsonl (3 prompts) → 13 responses rows"
    assert lines["rank"].startswith("by score (mean) · kept 12 · dropped 1 (score is null) (")
    assert lines["lists"].startswith("top-4 · 1 lists of 4 · prompts dropped: 1 prompt has < 4 responses, "
                                     "1 top 4 all tied · dropped 8 rows: 1 beyond top-4, 3 prompt has < 4 "
                                     "responses, 4 top 4 all tied (")
