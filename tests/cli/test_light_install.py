"""The core install works without the `train` extra: with torch, torchvision, transformers, accelerate, peft
and gguf made unimportable (a sitecustomize that hides them from the path finder, as if never installed), the
real `prefdata` console script builds the bundled default recipe and queries, exports and publishes it; `prefdata
train` and a model step stop with one line saying what to install."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prefdata.extras import TRAIN_MODULES

REPO = Path(__file__).resolve().parents[2]
PREFDATA = Path(sys.executable).with_name("prefdata")

HIDE = f"""
import importlib.machinery, sys
HIDDEN = {sorted(TRAIN_MODULES)!r}

class _NotInstalled(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            return None
        return super().find_spec(name, path, target)

sys.meta_path[:] = [_NotInstalled if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
"""


@pytest.fixture
def no_train(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HIDE)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "PREFDATA_CATALOG")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO)])

    def run(*args: str, exe: str | Path = PREFDATA) -> subprocess.CompletedProcess:
        return subprocess.run([str(exe), *args], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    return run


def test_the_hiding_works(no_train):
    proc = no_train("-c", "import importlib.util, sys\nimport polars, lance, duckdb\n"
                    "print(importlib.util.find_spec('torch'), importlib.util.find_spec('transformers'))\nimport torch",
                    exe=sys.executable)
    assert proc.stdout == "None None\n" and proc.stderr.strip().endswith("ModuleNotFoundError: No module named 'torch'")


def test_build_query_export_publish_without_torch(no_train, tmp_path):
    proc = no_train("build", "--catalog", "cat")
    assert proc.returncode == 0, proc.stderr
    assert "wrote arena-curry@1  (2,328 pairs rows" in proc.stdout
    proc = no_train("sql", 'SELECT stage, count(*) AS n FROM "arena-curry" GROUP BY 1 ORDER BY 1', "--json", "-c", "cat")
    assert json.loads(proc.stdout) == [{"stage": 0, "n": 819}, {"stage": 1, "n": 683}, {"stage": 2, "n": 826}]
    for args in (["log", "arena-curry"], ["verify", "arena-curry@1"], ["export", "arena-curry", "hf-out", "--to", "hf"],
                 ["publish", "arena-curry", "--repo", "me/arena-curry", "--dry-run", "pub"]):
        proc = no_train(*args, "-c", "cat")
        assert proc.returncode == 0, (args, proc.stderr)
    assert (tmp_path / "hf-out" / "dataset_info.json").exists() and any((tmp_path / "pub").rglob("*.parquet"))


def test_train_and_model_steps_say_what_to_install(no_train, tmp_path):
    hint = "which the core install leaves out: pip install 'prefdata[train]' (or `pip install -e '.[train]'` in a checkout)"
    proc = no_train("train", str(REPO / "examples" / "recipes" / "train_tiny.yaml"), "-c", "cat")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"error: prefdata train needs torch, {hint}\n"
    (tmp_path / "m").mkdir()
    (tmp_path / "p.jsonl").write_text('{"prompt": "hi"}\n{"prompt": "yo"}\n')
    (tmp_path / "r.yaml").write_text("name: synth-x\nsource: {path: p.jsonl, format: prompts}\nsteps:\n"
                                     "  - generate: {models: [{name: m, path: m}], n: 2}\n")
    proc = no_train("build", "r.yaml", "-c", "cat2")
    assert proc.returncode == 2 and proc.stderr == f"error: steps[0].generate (generate) needs torch, {hint}\n"
    assert not (tmp_path / "cat2").exists()
