"""The report page of a `prefdata iterate` rounds table (`prefdata report <name>-rounds`): per-round curves.

A rounds version (lineage builder `iterate.record`) holds one row per finished round, each with its metrics as
JSON (the round's entry of rounds.json); its lineage adds the start policy's numbers and the wall time of every
phase. Charts, one row per round (the start policy first where it has a value):
- win rate against the start policy and against the previous round, with their bootstrap intervals;
- each verifier's held-out pass rate (rules, code tests) with its interval;
- mean response length (tokens) and KL(policy ‖ start) per response (± 1.96 standard errors);
- pairs kept per round, and the share of pairs whose chosen and rejected come from different models;
- wall time per phase.
Written with the report's own page frame and SVG helpers (prefdata/report.py, report_assets/svg.py)."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

BUILDER = "iterate.record"
PHASES = ("generate", "build", "train", "policy", "eval", "record")


def is_rounds_table(lineage: dict) -> bool:
    return lineage.get("builder") == BUILDER


def rounds_stats(table: pa.Table, lineage: dict) -> dict[str, Any]:
    rounds = [json.loads(m) for m in table.column("metrics").to_pylist()]
    return {"rounds": rounds, "start": lineage.get("start") or {}, "seconds": lineage.get("seconds") or {},
            "stopped": lineage.get("stopped")}


def _ci(r: dict, key: str):
    ci = r.get(key)
    return tuple(ci) if ci else None


def rounds_charts(st: dict) -> list[str]:
    from prefdata.report_assets import svg

    rounds, start = st["rounds"], st["start"]
    labels = [f"round {r['round']}" for r in rounds]
    charts = [svg.points(labels, {"vs start": [r.get("win_rate_vs_start") for r in rounds],
                                  "vs previous round": [r.get("win_rate_vs_previous") for r in rounds]},
                         "held-out win rate (95% bootstrap interval)", "share of prompts won (ties half)",
                         intervals={"vs start": [_ci(r, "win_rate_vs_start_ci") for r in rounds],
                                    "vs previous round": [_ci(r, "win_rate_vs_previous_ci") for r in rounds]},
                         ref=0.5, x_range=(0.0, 1.0))]
    verifiers = sorted({n for r in rounds for n in (r.get("pass_rate") or {})})
    if verifiers:
        s_labels = ["start"] + labels
        charts.append(svg.points(
            s_labels, {n: [(start.get("pass_rate") or {}).get(n)] + [(r.get("pass_rate") or {}).get(n) for r in rounds]
                       for n in verifiers},
            "held-out verifier pass rate (95% bootstrap interval)", "pass rate",
            intervals={n: [None] + [tuple((r.get("pass_rate_ci") or {}).get(n) or ()) or None for r in rounds]
                       for n in verifiers}, x_range=(0.0, 1.0)))
    lengths = [start.get("mean_length")] + [r.get("mean_length") for r in rounds]
    if any(v is not None for v in lengths):
        charts.append(svg.points(["start"] + labels, {"mean length": lengths}, "mean held-out response length",
                                 "tokens"))
    kl = [r.get("kl_to_start") for r in rounds]
    if any(v is not None for v in kl):
        iv = [(v - 1.96 * (r.get("kl_to_start_se") or 0.0), v + 1.96 * (r.get("kl_to_start_se") or 0.0))
              if v is not None else None for v, r in zip(kl, rounds, strict=True)]
        charts.append(svg.points(labels, {"KL": kl}, "KL(policy ‖ start) per response (± 1.96 se)",
                                 "nats per response", intervals={"KL": iv}, ref=0.0))
    charts.append(svg.bars(labels, [r.get("pairs") or 0 for r in rounds], "training pairs kept per round", "round",
                           "pairs"))
    share = [r.get("cross_model_share") for r in rounds]
    if any(v is not None for v in share):
        charts.append(svg.points(labels, {"share": share}, "pairs whose chosen and rejected come from different models",
                                 "share of pairs", x_range=(0.0, 1.0)))
    return charts


def _seconds_html(st: dict) -> str:
    from prefdata.report import _esc

    secs = st["seconds"]
    if not secs:
        return ""
    head = "".join(f"<th>{p}</th>" for p in PHASES)
    rows = "".join(f"<tr><td>round {_esc(k)}</td>" + "".join(f"<td>{_esc(v.get(p, '–'))}</td>" for p in PHASES)
                   + "</tr>" for k, v in sorted(secs.items(), key=lambda kv: int(kv[0])))
    return f"<h2>Wall time per phase (seconds)</h2><table><tr><th></th>{head}</tr>{rows}</table>"


def _table_html(st: dict) -> str:
    from prefdata.report import _esc, _fmt

    cols = ("round", "pairs", "samples", "win_rate_vs_start", "win_rate_vs_previous", "pass_rate", "mean_length",
            "kl_to_start", "cross_model_share", "data", "checkpoint")
    rows = "".join("<tr>" + "".join(f"<td>{_esc(_fmt(r.get(c)) if not isinstance(r.get(c), dict) else json.dumps(r.get(c)))}</td>"
                                    for c in cols) + "</tr>" for r in st["rounds"])
    return "<table><tr>" + "".join(f"<th>{c}</th>" for c in cols) + f"</tr>{rows}</table>"


def write_rounds_report(name: str, version: int, table: pa.Table, lineage: dict, out_dir: Path) -> Path:
    from prefdata.report import _esc, _page

    st = rounds_stats(table, lineage)
    charts = rounds_charts(st)
    stopped = st["stopped"]
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sub = (f"iterate rounds · {len(st['rounds'])} round(s) · start policy <code>{_esc(st['start'].get('policy'))}"
           f"</code> · report generated {now}")
    body = ("<h2>Per round</h2><div class=grid>" + "".join(f"<div class=card>{c}</div>" for c in charts) + "</div>"
            + (f"<p>stopped after round {_esc(stopped['round'])}: {_esc(stopped['reason'])}</p>" if stopped else "")
            + _table_html(st) + _seconds_html(st)
            + "<h2>Full lineage record</h2><details><summary>JSON</summary><pre>"
            + _esc(json.dumps(lineage, indent=2, default=str, ensure_ascii=False)) + "</pre></details>")
    out_dir.mkdir(parents=True, exist_ok=True)
    index = out_dir / "index.html"
    index.write_text(_page(f"{name}@{version}", sub, body), encoding="utf-8")
    (out_dir / "report.json").write_text(json.dumps({"ref": f"{name}@{version}", "kind": "iterate_rounds", **st},
                                                    indent=2, default=str), encoding="utf-8")
    return index
