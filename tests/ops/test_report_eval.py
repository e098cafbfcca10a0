"""report of evaluation results: an `eval` table in a real catalog (win rate with its interval, LC win rate, KL,
per-scorer means, length distributions model vs baseline; from the lineage's summary or computed), train-vs-eval
curves of runs (metrics.jsonl train rows and eval/* rows), evaluations logged on the training dataset, a training
output dir reported through the real CLI, and the eval page rendered in headless Chromium."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from prefdata.eval_metrics import bootstrap_ci, length_controlled_win_rate, summarize, win_values
from prefdata.report import is_eval_row, run_curves, write_report
from prefdata.schema import conform
from tests.browser_kit import render

REPO = Path(__file__).resolve().parents[2]

WINNERS = ["model", "model", "tie", "baseline", "model", "tie", "baseline", "model"]   # win rate 5/8
LENGTH = [10, 12, 8, 30, 11, 9, 40, 14]
BASELINE_LENGTH = [10, 10, 8, 10, 10, 9, 10, 10]


def eval_table() -> pa.Table:
    n = 8
    return pa.table({
        "prompt_id": [f"p{i}" for i in range(n)], "prompt": [f"question {i}?" for i in range(n)],
        "response": [f"model answer {i}" for i in range(n)], "baseline_response": [f"base answer {i}" for i in range(n)],
        "winner": WINNERS,
        "score_rm": pa.array([0.9, 0.8, 0.5, 0.1, 0.7, 0.4, 0.2, None], pa.float64()),
        "baseline_score_rm": pa.array([0.1, 0.2, 0.5, 0.6, 0.3, 0.4, 0.9, 0.2], pa.float64()),
        "score_short": pa.array([1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0], pa.float64()),
        "baseline_score_short": pa.array([0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0], pa.float64()),
        "length": pa.array(LENGTH, pa.int64()), "baseline_length": pa.array(BASELINE_LENGTH, pa.int64()),
        "logratio": pa.array([0.5, 1.5, None, 1.0, 2.0, None, None, None], pa.float64()),
    })


def metrics_rows() -> list[dict]:
    """A pairs run in the trainer's format: eval of the starting policy at step 0, train rows 1..6, eval every 3."""
    rows = [{"step": 0, "eval/loss": 0.70, "eval/reward_accuracy": 0.5, "eval/margin": 0.0, "eval/seconds": 0.1}]
    for s in range(1, 7):
        rows.append({"step": s, "stage": 0, "loss": 0.69 - 0.02 * s, "reward_accuracy": 0.5 + 0.05 * s,
                     "margin": 0.01 * s, "lr": 1e-5})
        if s % 3 == 0:
            rows.append({"step": s, "eval/loss": 0.70 - 0.01 * s, "eval/reward_accuracy": 0.5 + 0.04 * s,
                         "eval/margin": 0.005 * s, "eval/chosen_logp_shift": -0.1 * s,
                         "eval/rejected_logp_shift": -0.2 * s, "eval/seconds": 0.1})
    return rows


def write_run(run: Path, rows: list[dict]) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


@pytest.fixture(scope="module")
def eval_catalog(tmp_path_factory):
    from catalog import Catalog

    cat = Catalog.open(tmp_path_factory.mktemp("eval-catalog"))
    train = conform(pa.table({"prompt_id": ["p0", "p1"], "prompt": ["q0", "q1"], "chosen": ["a b", "c"],
                              "rejected": ["a", "c d"], "chosen_id": ["r0", "r2"], "rejected_id": ["r1", "r3"],
                              "score_chosen": [2.0, 1.0], "score_rejected": [1.0, 0.5], "margin": [1.0, 0.5],
                              "strategy": ["best_vs_worst"] * 2}), "pairs")
    tv = cat.write("train-pairs", train, message="training data")
    run = write_run(tmp_path_factory.mktemp("run") / "dpo-run", metrics_rows())
    cat.log_event("train-pairs", tv, "train", {"output_dir": str(run), "config_sha256": "abc"})
    t = eval_table()
    summary = summarize(t, scorers=["rm", "short"], n_boot=500, seed=3, winner_by="rm")
    lineage = {"kind": "eval", "inputs": [f"train-pairs@{tv}"],
               "eval": {"checkpoint": {"path": str(run / "final"), "run_dir": str(run), "step": 6,
                                       "dataset": f"train-pairs@{tv}", "config_sha256": "abc", "base_model": "tiny"},
                        "baseline": {"model": "tiny"}, "prompts": f"train-pairs@{tv}", "scorers": ["rm", "short"],
                        "generate": {"n": 1}, "summary": summary}}
    v_stored = cat.write("arena-eval", t, message="eval of dpo-run", lineage=lineage)
    # the same table without a stored summary (and without the eval kind): the report computes it
    v_computed = cat.write("arena-eval", t, message="eval table, no summary")
    cat.log_event("train-pairs", tv, "eval", {"eval_dataset": f"arena-eval@{v_stored}",
                                              "checkpoint": str(run / "final"), "step": 6,
                                              "win_rate": summary["win_rate"], "win_rate_ci": summary["win_rate_ci"],
                                              "lc_win_rate": summary["lc_win_rate"], "kl": summary["kl"]["mean"]})
    return cat, tv, v_stored, v_computed, run, summary


def test_eval_report_numbers_from_the_lineage_summary(eval_catalog, tmp_path):
    cat, tv, v_stored, _, run, summary = eval_catalog
    index = write_report(cat, f"arena-eval@{v_stored}", tmp_path / "r")
    rep = json.loads((index.parent / "report.json").read_text())
    assert rep["kind"] == "eval" and rep["rows"] == 8 and rep["eval_source"] == "lineage"
    ev = rep["eval"]
    assert ev == json.loads(json.dumps(summary))
    assert ev["win_rate"] == 0.625 and (ev["wins"], ev["ties"], ev["losses"]) == (4, 2, 2)
    assert ev["win_rate_ci"] == list(bootstrap_ci(win_values(WINNERS), n_boot=500, seed=3))
    assert ev["lc_win_rate"] == length_controlled_win_rate(win_values(WINNERS), np.array(LENGTH),
                                                           np.array(BASELINE_LENGTH))
    assert ev["kl"]["mean"] == 1.25 and ev["kl"]["n"] == 4
    assert ev["scorers"]["short"] == {"model_mean": 0.625, "baseline_mean": 0.375}
    # length distributions model vs baseline (the histograms' data)
    assert rep["lengths"]["model"] == {"n": 8, "mean": 16.75, "min": 8.0, "max": 40.0}
    assert rep["lengths"]["baseline"] == {"n": 8, "mean": 9.625, "min": 8.0, "max": 10.0}
    assert rep["scores"]["rm"]["model"]["n"] == 7 and rep["scores"]["rm"]["baseline"]["n"] == 8
    # the evaluated checkpoint's run, found through the lineage, with its train and eval curves
    # named without the local directory above it (a report may leave the machine: catalog/portable.py)
    assert rep["training_runs"][0]["run"] == f"…/{run.name}" and rep["training_runs"][0]["steps"] == 6
    assert rep["lineage_chain"] == [f"train-pairs@{tv}"]
    html = index.read_text()
    for title in ("win rate vs baseline (95% bootstrap interval)", "mean score per scorer",
                  "response length: model vs baseline", "score distribution: rm", "loss: dpo-run",
                  "Evaluation: model vs baseline", "length-controlled win rate", "the eval&#x27;s lineage"):
        assert title in html, title
    assert "<script" not in html


def test_eval_report_computes_the_summary_without_one_in_lineage(eval_catalog, tmp_path):
    cat, _, _, v_computed, _, _ = eval_catalog
    index = write_report(cat, f"arena-eval@{v_computed}", tmp_path / "r")
    rep = json.loads((index.parent / "report.json").read_text())
    assert rep["kind"] == "eval" and rep["eval_source"] == "computed"     # found by its winner/baseline columns
    assert rep["eval"] == json.loads(json.dumps(summarize(eval_table(), scorers=["rm", "short"])))
    assert rep["eval"]["n_boot"] == 2000 and rep["eval"]["seed"] == 0 and rep["eval"]["win_rate"] == 0.625
    assert rep["training_runs"] == []


def test_training_dataset_report_has_train_vs_eval_curves_and_evaluations(eval_catalog, tmp_path):
    cat, tv, v_stored, _, run, summary = eval_catalog
    index = write_report(cat, f"train-pairs@{tv}", tmp_path / "r")
    rep = json.loads((index.parent / "report.json").read_text())
    (r,) = rep["training_runs"]
    assert r["run"] == f"…/{run.name}" and r["steps"] == 6 and r["eval_rows"] == 3
    c = r["curves"]
    assert c["loss"]["loss"]["step"] == [1, 2, 3, 4, 5, 6]
    assert c["loss"]["loss"]["value"] == pytest.approx([0.67, 0.65, 0.63, 0.61, 0.59, 0.57])
    assert c["loss"]["eval/loss"] == {"step": [0, 3, 6], "value": pytest.approx([0.70, 0.67, 0.64])}
    assert c["reward_accuracy"]["eval/reward_accuracy"]["value"] == pytest.approx([0.5, 0.62, 0.74])
    assert c["reward_accuracy"]["reward_accuracy"]["step"] == [1, 2, 3, 4, 5, 6]
    assert c["eval log-prob shift from the reference"]["eval/rejected_logp_shift"]["value"] == pytest.approx([-0.6, -1.2])
    assert "eval/top1_accuracy" not in c                                # not a lists run
    (e,) = rep["evaluations"]
    assert e["eval_dataset"] == f"arena-eval@{v_stored}" and e["step"] == 6
    assert e["win_rate"] == 0.625 and e["win_rate_ci"] == summary["win_rate_ci"]
    html = index.read_text()
    assert "loss: dpo-run" in html and "reward_accuracy: dpo-run" in html
    assert "Evaluations of checkpoints trained on this version" in html


def test_run_curves_lists_rows_and_eval_row_rule():
    assert is_eval_row({"step": 3, "eval/loss": 1.0}) and not is_eval_row({"step": 3, "loss": 1.0, "eval/loss": 1.0})
    assert not is_eval_row({"step": 3})
    rows = [{"step": 0, "eval/loss": 2.0, "eval/top1_accuracy": 0.25, "eval/kendall_tau": 0.0},
            {"step": 1, "loss": 1.9, "reward_accuracy": None},
            {"step": 2, "loss": 1.7, "reward_accuracy": None},
            {"step": 2, "eval/loss": 1.8, "eval/top1_accuracy": 0.5, "eval/kendall_tau": 0.2}]
    c = run_curves(rows)
    assert set(c) == {"loss", "eval/top1_accuracy", "eval/kendall_tau"}   # no accuracy values: no chart
    assert c["eval/top1_accuracy"] == {"eval/top1_accuracy": {"step": [0, 2], "value": [0.25, 0.5]}}
    assert c["eval/kendall_tau"]["eval/kendall_tau"]["value"] == [0.0, 0.2]
    assert c["loss"]["loss"] == {"step": [1, 2], "value": [1.9, 1.7]}


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200", PREFDATA_CATALOG=str(cwd / "no-catalog"))
    return subprocess.run([sys.executable, "-m", "prefdata", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def test_cli_reports_a_training_run_dir(tmp_path):
    run = write_run(tmp_path / "run", metrics_rows())
    (run / "run.json").write_text(json.dumps({"dataset": "train-pairs@1", "steps": 6, "config_sha256": "abc",
                                              "eval": metrics_rows()[-1]}))
    p = _cli("report", str(run), "--out", str(tmp_path / "out"), "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["index"] == str(tmp_path / "out" / "index.html")
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["kind"] == "run" and rep["steps"] == 6 and rep["eval_rows"] == 3
    assert rep["curves"]["loss"]["eval/loss"]["step"] == [0, 3, 6]
    assert rep["run_json"] == {"dataset": "train-pairs@1", "config_sha256": "abc", "steps": 6}
    assert rep["last_eval"]["step"] == 6
    assert "loss: run" in (tmp_path / "out" / "index.html").read_text()
    # a run dir with run.json but no metrics.jsonl: one line, exit 2, no catalog needed
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "run.json").write_text("{}")
    p = _cli("report", str(tmp_path / "bare"), "--out", str(tmp_path / "out2"), cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.strip().endswith("has run.json but no metrics.jsonl; nothing to plot")
    assert len(p.stderr.strip().splitlines()) == 1


def test_eval_report_renders_in_headless_chromium(eval_catalog, tmp_path):
    from PIL import Image

    cat, _, v_stored, _, _, _ = eval_catalog
    index = write_report(cat, f"arena-eval@{v_stored}", tmp_path / "r")
    shot = tmp_path / "eval.png"
    page = render(index, shot, ("svg", "svg circle"))
    errors, failed, title = page.errors, page.failed, page.title
    n_svg, n_circles = page.counts["svg"], page.counts["svg circle"]
    assert errors == [] and failed == []
    # win-rate chart, scorer means, 2 score histograms, lengths, and the checkpoint run's curves (4 charts)
    assert title.startswith("arena-eval@") and n_svg >= 9
    assert n_circles == 2 + 2 * 2                                        # (win, LC) + (model, baseline) x 2 scorers
    img = Image.open(shot).convert("RGB")
    assert img.width >= 1000 and img.height > 1200
    colors = img.resize((200, 400)).getcolors(maxcolors=100_000)
    assert colors is not None and len(colors) > 50
