"""Property-based fuzzing of ingest: random JSON rows shaped like each format (right keys, random
values) either ingest into a table that passes its contract with exact row accounting, or raise a
PrefdataError. Nothing else (KeyError, TypeError, a crash) may escape."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefdata.errors import PrefdataError
from prefdata.ingest import read_source
from prefdata.schema import validate

scalar = st.one_of(st.none(), st.booleans(), st.integers(-5, 12), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(max_size=6), st.sampled_from(["N/A", "3", "", "\n\nHuman: x\n\nAssistant: y"]))
value = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                    st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                     max_leaves=6)


def completion(keys):
    return st.fixed_dictionaries({k: value for k in keys}, optional={"extra": value})


SHAPES = {
    "arena": st.fixed_dictionaries({"question_id": value, "prompt": value,
                                    "completions": st.one_of(value, st.lists(completion(
                                        ["model", "answer_id", "response", "score", "judgment"]), max_size=3))}),
    "hh-rlhf": st.fixed_dictionaries({"chosen": value, "rejected": value}),
    "nectar": st.fixed_dictionaries({"prompt": value, "answers": st.one_of(value, st.lists(completion(
        ["answer", "model", "rank"]), max_size=3))}),
    "helpsteer2": st.fixed_dictionaries({k: value for k in ("prompt", "response", "helpfulness", "correctness",
                                                           "coherence", "complexity", "verbosity")}),
    "trl": st.fixed_dictionaries({"prompt": value, "chosen": value, "rejected": value}),
    "ultrafeedback": st.fixed_dictionaries({"instruction": value, "completions": st.one_of(value, st.lists(
        completion(["model", "response", "overall_score", "annotations"]), max_size=2))}),
}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(sorted(SHAPES)), data=st.data(), on_error=st.sampled_from(["raise", "drop"]))
def test_random_rows_ingest_or_raise_a_typed_error(fmt, data, on_error):
    rows = data.draw(st.lists(SHAPES[fmt], min_size=1, max_size=4))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.jsonl"
        # allow_nan: NaN/Infinity tokens are what real exports contain and must be caught
        path.write_text("".join(json.dumps(r, allow_nan=True) + "\n" for r in rows), encoding="utf-8")
        try:
            res = read_source(path, format=fmt, on_error=on_error, media_dir=Path(d) / "media")
        except PrefdataError as e:
            assert "fuzz.jsonl" in str(e) or fmt in str(e)
            return
        validate(res.table, res.kind)
        assert 0 <= sum(res.drops.values()) <= res.rows_in
        if fmt in ("hh-rlhf", "trl", "helpsteer2"):
            # one output row per input line: every line is either in the table or in a drop reason
            assert res.rows_in == len(rows) == res.table.num_rows + sum(res.drops.values())
