"""Helpers shared by the catalog tests (a uniquely named module: several test folders have a conftest.py,
so `from conftest import ...` would pick whichever was imported first)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa

REPO = Path(__file__).resolve().parents[2]
WRITER = Path(__file__).with_name("catalog_writer_proc.py")


PAIRS_SCHEMA = pa.schema([
    ("prompt_id", pa.string()), ("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string()),
    ("margin", pa.float64()), ("stage", pa.int32()), ("writer", pa.string()), ("i", pa.int64()),
])


def pairs_table(n: int, *, start: int = 0, tag: str = "t") -> pa.Table:
    """A pairs-like table whose rows are identifiable by (tag, i)."""
    idx = list(range(start, start + n))
    return pa.Table.from_pydict({
        "prompt_id": [f"{tag}-{i // 3}" for i in idx],
        "prompt": [f"question {i // 3} ünïcode ✓" for i in idx],
        "chosen": [f"good answer {i}" for i in idx],
        "rejected": [f"bad answer {i}" for i in idx],
        "margin": [float(i % 7) / 2 for i in idx],
        "stage": pa.array([i % 3 for i in idx], pa.int32()),
        "writer": [tag] * n,
        "i": pa.array(idx, pa.int64()),
    }, schema=PAIRS_SCHEMA)


def writer_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def spawn_writer(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WRITER), *args], env=writer_env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
