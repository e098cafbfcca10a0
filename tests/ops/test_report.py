"""report: numbers behind the plots match the catalog (checked through SQL), training curves come from
a trainer event's metrics.jsonl, and the page renders in a real headless Chromium with no console errors."""
from __future__ import annotations

import json
import shutil

import pytest

from prefdata.report import write_report
from tests.browser_kit import render


@pytest.fixture(scope="module")
def report_dir(built_catalog, tmp_path_factory):
    cat, res = built_catalog
    run = tmp_path_factory.mktemp("run")
    # a trainer run's metrics in the trainer's format (one JSON object per step), linked by a catalog event
    lines = [json.dumps({"step": s, "loss": 0.69 - 0.01 * s, "reward_accuracy": min(1.0, 0.5 + 0.04 * s)})
             for s in range(1, 11)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    cat.log_event("arena-curry", res.version, "train", {"output_dir": str(run), "config_sha256": "abc"})
    out = tmp_path_factory.mktemp("report")
    index = write_report(cat, f"arena-curry@{res.version}", out)
    return cat, res, index


def test_report_numbers_match_the_catalog(report_dir):
    cat, res, index = report_dir
    summary = json.loads((index.parent / "report.json").read_text())
    by_stage = cat.sql('SELECT stage, count(*) AS n FROM "arena-curry" GROUP BY stage ORDER BY stage').to_pylist()
    assert summary["stage_sizes"] == {str(r["stage"]): r["n"] for r in by_stage}
    per_prompt = cat.sql('SELECT count(*) AS n FROM "arena-curry" GROUP BY prompt_id').column("n").to_pylist()
    assert summary["pairs_per_prompt"]["n"] == len(per_prompt) == 195
    assert summary["pairs_per_prompt"]["max"] == max(per_prompt)
    m = cat.sql('SELECT avg(margin) AS m, min(margin) AS lo FROM "arena-curry"').to_pylist()[0]
    assert summary["margin"]["mean"] == pytest.approx(m["m"], abs=1e-6) and summary["margin"]["min"] == m["lo"]
    assert [s["step"] for s in summary["steps"]] == ["rank", "pairs", "curriculum"]
    assert summary["training_runs"][0]["steps"] == 10
    assert summary["lineage_chain"] == res.inputs
    html = index.read_text()
    for title in ("score distribution: overall", "margin (score_chosen", "pairs per prompt",
                  "curriculum stage sizes", "rows out of each build step", "chosen vs rejected length",
                  "loss: ", "reward_accuracy: ", res.inputs[0]):
        assert title in html, title
    assert "<script" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_report_renders_in_headless_chromium(report_dir, tmp_path):
    from PIL import Image

    _, _, index = report_dir
    shot = tmp_path / "report.png"
    page = render(index, shot)
    errors, failed, title, n_svg = page.errors, page.failed, page.title, page.counts["svg"]
    assert errors == [] and failed == []
    assert title.startswith("arena-curry@") and n_svg >= 8
    img = Image.open(shot).convert("RGB")
    assert img.width >= 1000 and img.height > 1500          # a long page of charts, not a blank frame
    colors = img.resize((200, 400)).getcolors(maxcolors=100_000)
    assert colors is not None and len(colors) > 50          # many colours: plots were drawn


def test_report_on_responses_and_missing_metrics(built_catalog, tmp_path):
    cat, res = built_catalog
    src, v = res.inputs[0].split("@")
    cat.log_event(src, int(v), "train", {"output_dir": str(tmp_path / "gone")})
    index = write_report(cat, res.inputs[0], tmp_path / "r")
    summary = json.loads((index.parent / "report.json").read_text())
    assert summary["kind"] == "responses" and summary["rows"] == 1400
    assert summary["scores"]["score"]["all"]["n"] == 1390           # 10 null judge scores are not plotted
    assert summary["training_runs"][0]["missing"].startswith("metrics file not found")
    assert "metrics file not found" in index.read_text()


def test_report_out_is_a_file(built_catalog, tmp_path):
    from prefdata.errors import PrefdataError

    cat, _ = built_catalog
    f = tmp_path / "x"
    f.write_text("")
    with pytest.raises(PrefdataError, match="is a file"):
        write_report(cat, "arena-curry", f)
    shutil.rmtree(tmp_path, ignore_errors=True)
