"""Property: any JSON Lines input either ingests (validated, every row accounted for) or raises a
PrefdataError - never another exception - whatever the format, mapping and on_error mode."""
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefdata.errors import PrefdataError
from prefdata.ingest import FORMATS, read_source
from prefdata.schema import validate

KEYS = ["prompt", "response", "chosen", "rejected", "completions", "question_id", "answer_id", "score", "model",
        "instruction", "annotations", "Rating", "overall_score", "answers", "answer", "rank", "helpfulness",
        "correctness", "coherence", "complexity", "verbosity", "caption", "label_0", "label_1", "image_0_url",
        "image_1_url", "completion", "label", "role", "content", "judgment", "honesty"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 12), st.sampled_from(["", " ", "N/A", "5", "abc"]),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["\n\nHuman: hi\n\nAssistant: a", "\n\nHuman: hi\n\nAssistant: b"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)),
                      max_leaves=12)
records = st.dictionaries(st.sampled_from(KEYS), values, max_size=8)
lines = st.one_of(records.map(lambda r: json.dumps(r).encode()),
                  st.sampled_from([b"", b"{", b"[1]", b"\xff\xfe{}", b"null", b'{"prompt": "\xc3"}']))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(lines, min_size=1, max_size=6),
       fmt=st.sampled_from([None, *sorted(k for k in FORMATS if k not in ("parquet", "hf"))]),
       mapping=st.sampled_from([None, {"prompt": "prompt", "response": "response", "score": "score"},
                                {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}]),
       on_error=st.sampled_from(["raise", "drop"]))
def test_random_rows_ingest_or_raise_prefdata_error(rows, fmt, mapping, on_error):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.jsonl"
        path.write_bytes(b"\n".join(rows) + b"\n")
        try:
            res = read_source(path, format=fmt, mapping=mapping if fmt in (None, "jsonl") else None,
                              on_error=on_error, media_dir=tmp)
        except PrefdataError:
            return
        validate(res.table, res.kind)
        assert res.rows_in == res.rows_kept + sum(res.drops.values())
        assert res.format in FORMATS
