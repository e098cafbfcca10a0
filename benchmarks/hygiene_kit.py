"""What the hygiene benchmarks (bench_near_dedup.py, bench_decontaminate.py, bench_minhash_libs.py) share:
seeded synthetic prompts, and running one measured phase in its own subprocess.

Words are drawn with Zipf-like frequencies (p ~ 1 / (rank + 10)) from a vocabulary of the bundled Arena prompts'
words padded with pseudo-words to `vocab` entries; lengths are uniform in [min_words, max_words]. Unrelated
prompts then share common words but almost never a 5-gram, as real prompts from different users."""
from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl

ARENA = Path(__file__).resolve().parents[1] / "examples" / "data" / "arena_bench_v1_7way_scored.jsonl"


def vocabulary(size: int, rng: np.random.Generator) -> np.ndarray:
    text = " ".join(pl.read_ndjson(ARENA)["prompt"].to_list()).lower()
    seen = list(dict.fromkeys(re.findall(r"[a-z]+", text)))
    syll = np.array(["ka", "lo", "mi", "ne", "ru", "ta", "po", "si", "de", "vu", "an", "or", "el", "is"])
    extra = size - len(seen)
    if extra > 0:
        parts = syll[rng.integers(0, len(syll), (extra, 3))]
        seen += [a + b + c + str(i) for i, (a, b, c) in enumerate(parts)]
    return np.array(seen[:size])


def corpus(n: int, seed: int, *, vocab_size: int = 30_000, min_words: int = 20,
           max_words: int = 90) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.random.Generator]:
    """n prompts as (flat word indices, offsets: prompt i is idx[off[i]:off[i+1]], vocabulary, the generator)."""
    rng = np.random.default_rng(seed)
    vocab = vocabulary(vocab_size, rng)
    lengths = rng.integers(min_words, max_words + 1, n)
    weights = 1.0 / (np.arange(len(vocab)) + 10.0)
    idx = rng.choice(len(vocab), size=int(lengths.sum()), p=weights / weights.sum()).astype(np.uint32)
    return idx, np.concatenate([[0], np.cumsum(lengths)]), vocab, rng


def texts(idx: np.ndarray, offsets: np.ndarray, vocab: np.ndarray) -> pl.Series:
    """Word indices -> space-joined texts (polars passes, no Python loop over words)."""
    doc = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    return (pl.DataFrame({"d": doc, "t": pl.Series(vocab).gather(idx)}).group_by("d", maintain_order=True)
            .agg(pl.col("t").str.join(" "))["t"].alias("prompt"))


def spawn(script: str, phase: str, data: Path, *extra: str) -> dict:
    """`python SCRIPT --phase PHASE --data DATA EXTRA...` in a fresh process (its own peak RSS); the JSON object
    on its last stdout line."""
    proc = subprocess.run([sys.executable, script, "--phase", phase, "--data", str(data), *extra],
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{phase} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    """This process's peak resident set: VmHWM (Linux), which starts afresh at exec; ru_maxrss does not (a child
    spawned by a parent that held 1 GB reports >= 1 GB), so it is only the fallback."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def report(result: dict) -> None:
    """A phase's result with this process's peak RSS (the input included), as one JSON line."""
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))
