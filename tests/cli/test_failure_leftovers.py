"""A failed command leaves nothing behind: a synth build whose model cannot be loaded leaves no empty
`_work/.../generate-*` folder (nor the catalog it would have created), a train against an empty catalog folder
writes no catalog.json there and names the bundled recipe that builds the missing dataset. A work folder that
holds finished shards is kept for resume, and said. Real subprocesses."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prefdata.build import tidy_work

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "PREFDATA_CATALOG")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "prefdata", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=200)


def test_failed_synth_build_leaves_no_folders(tmp_path):
    (tmp_path / "notamodel").mkdir()                 # exists (so the recipe parses) but holds no model
    (tmp_path / "p.jsonl").write_text('{"prompt": "hi"}\n{"prompt": "yo"}\n')
    (tmp_path / "r.yaml").write_text("name: synth-x\nsource: {path: p.jsonl, format: prompts}\nsteps:\n"
                                     "  - generate: {models: [{name: m, path: notamodel}], n: 2}\n")
    proc = _cli("build", "r.yaml", "--catalog", "cat", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: model 'm': cannot load {tmp_path / 'notamodel'}")
    assert not (tmp_path / "cat").exists()


def test_failed_train_on_empty_catalog_folder_writes_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    recipe = REPO / "examples" / "recipes" / "train_tiny.yaml"
    proc = _cli("train", str(recipe), "--catalog", "empty", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: {recipe}: dataset: dataset 'arena-curry' not found in catalog {tmp_path / 'empty'}; it is made by the "
        f"bundled recipe default.yaml: prefdata build {REPO / 'examples' / 'recipes' / 'default.yaml'} --catalog empty")
    assert list((tmp_path / "empty").iterdir()) == []
    # no --catalog folder at all: none is created, here or as ./prefdata_catalog
    proc = _cli("train", str(recipe), "--catalog", "nowhere", cwd=tmp_path)
    assert proc.returncode == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_tidy_keeps_only_work_with_finished_shards(tmp_path):
    work = tmp_path / "_work" / "synth-x" / "steps"
    (work / "generate-aaaa").mkdir(parents=True)
    (work / "generate-bbbb").mkdir()
    (work / "generate-bbbb" / "shard-00000.parquet").write_bytes(b"x")
    (work / "generate-bbbb" / "manifest.json").write_text("{}")
    assert tidy_work(work) == [(work / "generate-bbbb", 1)]
    assert sorted(p.name for p in work.iterdir()) == ["generate-bbbb"]
    (work / "generate-bbbb" / "shard-00000.parquet").unlink()
    (work / "generate-bbbb" / "manifest.json").unlink()
    assert tidy_work(work) == [] and not (tmp_path / "_work").exists()
