"""catalog.portable: absolute local paths leave metadata, everything else stays as written."""
from __future__ import annotations

import hashlib

from catalog.portable import portable_lineage, scrub


def test_scrub_elides_local_paths_and_keeps_the_rest(tmp_path):
    rec = {"recipe": str(tmp_path / "r.yaml"), "message": f"build x with {tmp_path}/r.yaml (2 steps)",
           "info": [{"unreadable": "/tmp/abc/v.mp4: moov atom not found"}, {"n": 3, "ok": None}],
           "dir": str(tmp_path) + "/", "home": "~/data/x.jsonl",
           "kept": ["https://example.org/a/b", "and/or", "1/2/3", "^/api/v1/.*", "../data/x.jsonl", "/"]}
    assert scrub(rec) == {
        "recipe": "…/r.yaml", "message": "build x with …/r.yaml (2 steps)",
        "info": [{"unreadable": "…/v.mp4: moov atom not found"}, {"n": 3, "ok": None}],
        "dir": f"…/{tmp_path.name}", "home": "…/x.jsonl",
        "kept": ["https://example.org/a/b", "and/or", "1/2/3", "^/api/v1/.*", "../data/x.jsonl", "…"]}


def test_source_is_named_as_the_recipe_wrote_it_with_its_sha256(tmp_path):
    src = tmp_path / "data" / "a.jsonl"
    src.parent.mkdir()
    src.write_bytes(b'{"x": 1}\n')
    sha = hashlib.sha256(b'{"x": 1}\n').hexdigest()
    ingest = {"builder": "ingest", "source": str(src), "message": f"ingest {src}"}
    child = {"builder": "recipe", "config": {"source": {"path": "../data/a.jsonl"}}}
    assert portable_lineage(ingest, child) == {"builder": "ingest", "source": "../data/a.jsonl",
                                               "source_sha256": sha, "message": "ingest …/a.jsonl"}
    # no recipe named it: the bare file name; a recorded sha256 wins over the file as it is now
    src.write_bytes(b"changed")
    assert portable_lineage({**ingest, "source_sha256": sha})["source"] == "a.jsonl"
    assert portable_lineage({**ingest, "source_sha256": sha})["source_sha256"] == sha
    # the file is gone and nothing was recorded: no hash is invented
    src.unlink()
    assert portable_lineage(ingest)["source_sha256"] is None
