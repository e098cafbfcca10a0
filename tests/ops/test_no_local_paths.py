"""Cards, exported lineage files and reports leave the machine: none of them may carry an absolute local
path. A catalog is built in a temporary directory from a recipe there (given by absolute path, its source
relative to it) plus a CLI-style ingest of an absolute path and a training run logged by its absolute
output dir; then a publish dry run, every export format and the HTML report are written, and every byte
of every file written is searched for the temp dir, /work, the home dir and any absolute path."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "examples" / "data" / "arena_bench_v1_7way_scored.jsonl"
# an absolute path of >= 2 components (not inside a URL, not a relative path)
ABS = re.compile(rb"(?<![\w.~:/\\-])/(?:[\w.@+-]+/)+[\w.@+-]*")
RECIPE = """name: arena-tmp
source: {path: ../data/arena.jsonl, format: arena}
steps:
  - rank: {by: score, aggregate: mean}
  - pairs: {strategy: all_pairs, min_margin: 1}
  - curriculum: {stages: 3, by: margin, order: easy_to_hard}
"""


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    from catalog import Catalog
    from catalog.export import export
    from prefdata.build import run_recipe
    from prefdata.ingest import ingest_to_catalog
    from prefdata.publish import publish
    from prefdata.report import write_report

    proj = tmp_path_factory.mktemp("proj")
    (proj / "data").mkdir()
    (proj / "recipes").mkdir()
    shutil.copy(SOURCE, proj / "data" / "arena.jsonl")
    (proj / "recipes" / "build.yaml").write_text(RECIPE)
    cat = Catalog.open(proj / "cat")
    res = run_recipe(proj / "recipes" / "build.yaml", cat, progress=False)
    ingest_to_catalog(cat, (proj / "data" / "arena.jsonl").resolve(), format="arena", name="raw")
    run = proj / "runs" / "dpo"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.69}) + "\n")
    cat.log_event("arena-tmp", res.version, "train", {"output_dir": str(run)})
    out = tmp_path_factory.mktemp("out")
    publish(cat, "arena-tmp", "me/arena-tmp", dry_run=out / "pub", stage_configs=True)
    publish(cat, "raw", "me/raw", dry_run=out / "pub-raw")
    for ref in ("arena-tmp", "raw", res.inputs[0]):
        for fmt in ("parquet", "jsonl", "hf"):
            target = out / "export" / ref.replace("@", "-") / fmt
            export(cat, ref, fmt, target if fmt != "hf" else target / "ds")
    write_report(cat, "arena-tmp", out / "report")
    write_report(cat, res.inputs[0], out / "report-source")
    return proj, out, res


def test_no_written_file_holds_an_absolute_local_path(written):
    proj, out, _ = written
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 20
    needles = {str(proj).encode(), str(out).encode(), str(Path(tempfile.gettempdir())).encode() + b"/",
               b"/work/", str(Path.home()).encode() + b"/", b"/home/", b"/root/"}
    for f in files:
        data = f.read_bytes()
        for n in needles:
            assert n not in data, f"{f.relative_to(out)} holds {n!r}"
        if f.suffix in (".md", ".json", ".html"):      # metadata; the data rows (and the card's sample of
            meta = data.split(b"## Sample")[0]         # them) are user text, which may quote a path or URL
            hits = ABS.findall(meta)
            assert not hits, f"{f.relative_to(out)} holds absolute path(s) {hits[:3]}"


def test_sources_are_named_relative_to_the_recipe_with_their_sha256(written):
    _, out, res = written
    sha = hashlib.sha256(SOURCE.read_bytes()).hexdigest()
    card = (out / "pub" / "README.md").read_text()
    row = next(line for line in card.splitlines() if line.startswith(f"| `{res.inputs[0]}` |"))
    assert row.endswith(f"| `../data/arena.jsonl` | `{sha}` |"), row
    assert "- recipe / builder: `…/build.yaml`" in card            # the recipe given by absolute path
    raw_card = (out / "pub-raw" / "README.md").read_text()
    assert f"- source: `arena.jsonl`, sha256 `{sha}`" in raw_card   # no recipe named it: the file name
    for ref, want in (("raw", "arena.jsonl"), (res.inputs[0], "arena.jsonl")):
        d = out / "export" / ref.replace("@", "-")
        for lin in [*d.glob("*/*.lineage.json"), d / "hf" / "ds" / "prefdata_lineage.json"]:
            rec = json.loads(lin.read_text())
            assert rec["source"] == want and rec["source_sha256"] == sha, (lin, rec["source"])
    html = (out / "report" / "index.html").read_text()
    assert "source <code>../data/arena.jsonl</code>" in html
    assert [r["run"] for r in json.loads((out / "report" / "report.json").read_text())["training_runs"]] == ["…/dpo"]
