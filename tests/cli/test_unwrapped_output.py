"""`prefdata log` and `prefdata ls` into a pipe (not a terminal) print every value whole on its line, never
wrapped at the 80 columns rich assumes without a terminal: grep and copy-paste find full hashes. Real
subprocesses, stdout a pipe, no COLUMNS in the environment."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MESSAGE = "a long commit message that a narrow terminal would wrap: " + "x" * 90 + " (end)"


def run_cli(*args: str, catalog: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(PREFDATA_CATALOG=str(catalog), PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "prefdata", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    from catalog import Catalog
    from prefdata.build import run_recipe

    root = tmp_path_factory.mktemp("cat") / "prefdata_catalog"
    cat = Catalog.open(root)
    res = run_recipe(None, cat, progress=False)
    cat.tag("arena-curry", res.version, "a-tag-name-long-enough-to-matter")
    table = cat.read("arena-curry", res.version).slice(0, 5)
    cat.write("small", table, message=MESSAGE)
    lin = cat.lineage("arena-curry", res.version)
    return root, lin


def test_log_prints_hashes_and_messages_whole_on_one_line(catalog):
    root, lin = catalog
    out = run_cli("log", "arena-curry", catalog=root)
    lines = out.splitlines()
    for key in ("config_sha256", "content_hash"):
        (line,) = [ln for ln in lines if ln.strip().startswith(key)]
        assert line.split() == [key, json.dumps(lin[key])]            # the 64-hex hash, whole, same line
    (head,) = [ln for ln in lines if ln.startswith(f"arena-curry@{lin['version']}")]
    assert head.endswith(lin["message"]) and len(head) > 80
    assert all(ln.startswith(("arena-curry@", "    ")) for ln in lines if ln), out   # no continuation lines
    small = run_cli("log", "small", catalog=root).splitlines()
    assert small[0].endswith(MESSAGE)


def test_log_json_keeps_hashes_whole(catalog):
    root, lin = catalog
    out = run_cli("log", "arena-curry", "--json", catalog=root)
    assert len(out.splitlines()) == 1 and lin["config_sha256"] in out.splitlines()[0]
    assert json.loads(out)[-1]["content_hash"] == lin["content_hash"]


def test_ls_prints_one_dataset_per_line(catalog):
    root, _ = catalog
    lines = run_cli("ls", catalog=root).splitlines()
    assert lines[0].split("\t") == ["name", "versions", "latest", "rows", "tags", "created_at", "message"]
    rows = {ln.split("\t")[0]: ln.split("\t") for ln in lines[1:]}
    assert set(rows) == {"arena-curry", "arena-curry-source", "small"} and len(lines) == 4
    assert rows["small"][1:4] == ["1", "1", "5"] and rows["small"][6] == MESSAGE
    assert rows["arena-curry"][4] == "a-tag-name-long-enough-to-matter"
