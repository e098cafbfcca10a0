"""Ids the source gives are kept; only rows without one get the computed id (sha256 of the normalized prompt,
sha256 of prompt_id + response)."""
import hashlib
import json

from prefdata.ingest import read_source


def test_only_missing_ids_are_computed(tmp_path):
    rows = [{"prompt": "Hi  there", "response": "a", "prompt_id": "p1", "response_id": "r1", "score": 1.0},
            {"prompt": "Hi  there", "response": "b", "prompt_id": "p1", "response_id": None, "score": 2.0},
            {"prompt": "Other", "response": "c", "prompt_id": None, "response_id": None, "score": 3.0},
            {"prompt": "Other", "response": "d", "prompt_id": None, "response_id": "r4", "score": 4.0}]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = read_source(path, format="jsonl").table
    other = hashlib.sha256(b"Other").hexdigest()
    assert table.column("prompt_id").to_pylist() == ["p1", "p1", other, other]
    assert table.column("response_id").to_pylist() == [
        "r1", hashlib.sha256(b"p1b").hexdigest(), hashlib.sha256((other + "c").encode()).hexdigest(), "r4"]
