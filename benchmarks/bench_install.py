"""Benchmark: what `pip install -e .` (the core: build, query, export, publish) and `pip install -e ".[train]"`
(+ torch, torchvision, transformers, accelerate, peft, gguf) cost on a fresh virtual environment.

Each install gets its own new venv under a temporary folder (python -m venv, then pip from that venv, the
ordinary package index); reported per install: seconds, the venv's size on disk, the number of installed
distributions, and whether torch / transformers are among them. One JSON line.

Downloads dominate a first run: pip's cache is kept by default, so a second run measures unpacking and linking
(--no-cache measures the download too). `--no-deps` installs prefdata alone, a quick check of the script.

  nice -n 19 .venv/bin/python benchmarks/bench_install.py                 # core then train (several GB, minutes)
  nice -n 19 .venv/bin/python benchmarks/bench_install.py --no-deps       # the script itself, seconds"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"core": ".", "train": ".[train]"}


def dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            p = Path(root, f)
            if not p.is_symlink():
                total += p.stat().st_size
    return total


def install(target: str, where: Path, *, no_deps: bool, no_cache: bool) -> dict:
    venv = where / f"venv-{target}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    before = dir_bytes(venv)
    cmd = [*pip, "install", "--disable-pip-version-check", "-q", "-e", TARGETS[target]]
    cmd += ["--no-deps"] if no_deps else []
    cmd += ["--no-cache-dir"] if no_cache else []
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1], "seconds": seconds}
    listed = json.loads(subprocess.run([*pip, "list", "--format", "json", "--disable-pip-version-check"],
                                       capture_output=True, text=True, check=True).stdout)
    names = {d["name"].lower() for d in listed}
    size = dir_bytes(venv)
    return {"seconds": round(seconds, 1), "venv_mb": round(size / 2**20), "added_mb": round((size - before) / 2**20),
            "distributions": len(listed), "torch": "torch" in names, "transformers": "transformers" in names}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--what", nargs="+", choices=sorted(TARGETS), default=["core", "train"])
    ap.add_argument("--no-deps", action="store_true", help="install prefdata alone (checks the script quickly)")
    ap.add_argument("--no-cache", action="store_true", help="pip --no-cache-dir: include the downloads")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-install-") as tmp:
        res = {t: install(t, Path(tmp), no_deps=args.no_deps, no_cache=args.no_cache) for t in args.what}
    out = {"bench": "install", "python": sys.version.split()[0], "no_deps": args.no_deps, "no_cache": args.no_cache,
           **res}
    if "venv_mb" in res.get("core", {}) and "venv_mb" in res.get("train", {}):
        out["train_vs_core_size"] = round(res["train"]["venv_mb"] / max(1, res["core"]["venv_mb"]), 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
