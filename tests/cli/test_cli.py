"""End-to-end CLI checks through real subprocesses: the newcomer's first ten minutes.

One default build per module (it is the slow part), then every read command against it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, catalog: Path, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PREFDATA_CATALOG=str(catalog), PYTHONPATH=str(REPO), COLUMNS="200")
    proc = subprocess.run([sys.executable, "-m", "prefdata", *args], capture_output=True, text=True,
                          env=env, cwd=cwd or REPO, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"prefdata {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    catalog = tmp_path_factory.mktemp("cat") / "prefdata_catalog"
    proc = run_cli("build", "--json", catalog=catalog)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return catalog, result


def test_default_build_produces_curriculum_pairs(built):
    catalog, result = built
    assert result["name"] == "arena-curry"
    assert result["version"] >= 1
    assert result["rows"] > 1000          # 200 prompts x up to 21 pairs, min_margin 1
    out = run_cli("sql", "--json", 'SELECT stage, count(*) AS n, min(margin) AS lo, max(margin) AS hi '
                  'FROM "arena-curry" GROUP BY stage ORDER BY stage', catalog=catalog)
    stages = json.loads(out.stdout)
    assert [s["stage"] for s in stages] == [0, 1, 2]
    assert sum(s["n"] for s in stages) == result["rows"]
    # easy -> hard: stage 0 holds the largest margins
    assert stages[0]["lo"] >= stages[1]["hi"] - 1e-9 or stages[0]["lo"] >= stages[2]["hi"]
    assert all(s["lo"] > 1.0 for s in stages)   # min_margin 1 is strict


def test_log_shows_lineage_and_accounting(built):
    catalog, _ = built
    out = run_cli("log", "arena-curry", "--json", catalog=catalog)
    records = json.loads(out.stdout)
    rec = next(r for r in records if r.get("version") is not None and r.get("config_sha256"))
    assert len(rec["config_sha256"]) == 64
    assert any("arena-curry-source@" in i for i in rec["inputs"])
    assert rec["rows_in"] == rec["rows_kept"] + sum(rec["drops"].values())
    human = run_cli("log", "arena-curry", catalog=catalog).stdout
    assert "config_sha256" in human and "arena-curry@" in human


def test_show_ls_and_tag(built):
    catalog, result = built
    rows = json.loads(run_cli("show", f"arena-curry@{result['version']}", "--limit", "3", "--json",
                              catalog=catalog).stdout)
    assert len(rows) == 3 and {"prompt", "chosen", "rejected", "margin", "stage"} <= set(rows[0])
    listing = json.loads(run_cli("ls", "--json", catalog=catalog).stdout)
    assert {r["name"] for r in listing} >= {"arena-curry", "arena-curry-source"}
    run_cli("tag", "arena-curry", str(result["version"]), "v1", catalog=catalog)
    again = json.loads(run_cli("show", "arena-curry@v1", "--limit", "3", "--json", catalog=catalog).stdout)
    assert again == rows


def test_export_hf_loads_in_trl_format(built, tmp_path):
    catalog, result = built
    out = tmp_path / "hf"
    run_cli("export", "arena-curry", str(out), "--to", "hf", catalog=catalog)
    import datasets

    ds = datasets.load_from_disk(str(out))
    assert ds.num_rows == result["rows"]
    row = ds[0]
    assert isinstance(row["prompt"], str) and isinstance(row["chosen"], str) and isinstance(row["rejected"], str)
    from trl.data_utils import is_conversational, maybe_extract_prompt

    assert not is_conversational(row)
    assert maybe_extract_prompt(row)["prompt"] == row["prompt"]


def test_rebuild_is_reproducible(built):
    catalog, result = built
    again = json.loads(run_cli("build", "--json", catalog=catalog).stdout.strip().splitlines()[-1])
    assert again["content_hash"] == result["content_hash"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (("show", "no-such-dataset"), "no-such-dataset"),
        (("sql", 'DROP TABLE "arena-curry"'), "refused statement type drop"),
        (("build", "examples/recipes/does-not-exist.yaml"), "does-not-exist.yaml"),
        (("export", "arena-curry", "/tmp/x", "--to", "csv"), "--to"),
        (("show", "arena-curry@999"), "999"),
    ],
)
def test_user_errors_exit_2_with_one_line(built, args, needle):
    catalog, _ = built
    proc = run_cli(*args, catalog=catalog, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and needle.lower() in lines[0].lower(), proc.stderr


def test_bad_recipe_names_yaml_path(built, tmp_path):
    catalog, _ = built
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(
        "name: bad\n"
        f"source: {{path: {REPO / 'examples/data/arena_bench_v1_7way_scored.jsonl'}, format: arena}}\n"
        "steps:\n  - rank: {by: [score], aggregate: mean}\n  - pairs: {strategy: all_pairs, min_margin: lots}\n")
    proc = run_cli("build", str(recipe), catalog=catalog, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "steps[1].pairs.min_margin" in proc.stderr
