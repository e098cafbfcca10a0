"""Benchmark: start-up of the `prefdata` command, one fresh process per run (what a user waits for).

  help   `prefdata --help`
  build  `prefdata build` of the bundled default recipe (1,400 Arena responses -> 2,328 pairs) into an empty
         catalog: at this size the time is mostly imports and process start
  import the modules `prefdata build` imports, and whether torch / transformers are among them

--checkout DIR measures another checkout of the repository (e.g. a `git worktree` of an older commit) with the
same interpreter, so before/after run side by side. Median and min of --runs runs; one JSON line.

  nice -n 19 .venv/bin/python benchmarks/bench_startup.py --runs 5
  git worktree add /tmp/prefdata-before <commit> && \\
    nice -n 19 .venv/bin/python benchmarks/bench_startup.py --runs 5 --checkout /tmp/prefdata-before"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = "import sys; from prefdata.cli import main; sys.argv[0] = 'prefdata'; main()"
MODULES = """
import sys
from prefdata.cli import main
sys.argv = ["prefdata", "build", "--catalog", sys.argv[1]]
try:
    main()
except SystemExit:
    pass
print(len(sys.modules), sorted({m.split(".")[0] for m in sys.modules} & {"torch", "transformers", "torchvision",
      "accelerate", "peft", "scipy", "pandas", "duckdb", "datasets"}), file=sys.stderr)
"""


def run(args: list[str], env: dict[str, str], cwd: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{args[-1]} failed: {proc.stderr[-1500:]}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--checkout", type=Path, default=ROOT, help="repository checkout to measure (default: this one)")
    args = ap.parse_args()
    checkout = args.checkout.resolve()
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    times: dict[str, list[float]] = {"help": [], "build": []}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        tmp = Path(tmp)
        for i in range(args.runs):
            times["help"].append(run(["-c", CLI, "--help"], env, tmp))
            times["build"].append(run(["-c", CLI, "build", "--catalog", str(tmp / f"cat-{i}")], env, tmp))
        proc = subprocess.run([sys.executable, "-c", MODULES, str(tmp / "cat-modules")], env=env, cwd=tmp,
                              capture_output=True, text=True)
        n_modules, heavy = proc.stderr.strip().splitlines()[-1].split(" ", 1)
    commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(json.dumps({"bench": "startup", "checkout": str(checkout), "commit": commit, "runs": args.runs,
                      "cpus": os.cpu_count(),
                      **{f"{k}_median_s": round(statistics.median(v), 3) for k, v in times.items()},
                      **{f"{k}_min_s": round(min(v), 3) for k, v in times.items()},
                      "build_modules": int(n_modules), "build_imports_of_note": json.loads(heavy.replace("'", '"'))}))


if __name__ == "__main__":
    main()
