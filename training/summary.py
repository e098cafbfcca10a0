"""What `prefdata train` says when it finishes: where the model, metrics.jsonl and run.json went, the steps, the
final metrics, the dataset version trained on, the reference version and the rows dropped (with why). The
same dict is the `summary` of `--json` and the lines printed on stdout otherwise."""
from __future__ import annotations

from pathlib import Path
from typing import Any

# the last step's metrics shown (when the loss reports them)
FINAL_KEYS = ("loss", "reward_accuracy", "margin")


def train_summary(result: dict) -> dict[str, Any]:
    """The summary of a training result (LM, VLM or diffusion: keys a run lacks are left out)."""
    out_dir = Path(result["output_dir"]) if result.get("output_dir") else None
    last = result.get("last") or {}
    ref = result.get("reference") or {}
    s: dict[str, Any] = {
        "output_dir": str(out_dir) if out_dir else None,
        "final_model": result.get("final_model"),
        "metrics": str(out_dir / "metrics.jsonl") if out_dir else None,
        "run_json": str(out_dir / "run.json") if out_dir else None,
        "steps": result.get("steps"),
        "resumed_from": result.get("resumed_from") or 0,
        "seconds": round(float(result["seconds"]), 1) if result.get("seconds") is not None else None,
        "final": {k: last[k] for k in FINAL_KEYS if last.get(k) is not None},
        "dataset": result.get("dataset"),
        "reference": {k: ref[k] for k in ("status", "ref", "model") if ref.get(k) is not None},
        "rows_trained": result.get("rows_trained"),
        "rows_in": result.get("rows_in"),
        "rows_dropped": dict(result.get("rows_dropped") or {}),
    }
    if result.get("eval"):
        s["eval"] = {k: v for k, v in result["eval"].items() if k.startswith("eval_") and v is not None}
    if result.get("disk"):
        s["disk"] = result["disk"]
    return {k: v for k, v in s.items() if v is not None}


def rows_line(trained: int, rows_in: int | None, dropped: dict) -> str:
    """`N of M rows trained; dropped K why · ...`: every drop reason with its count."""
    why = " · ".join(f"{n} {reason}" for reason, n in dropped.items() if n)
    return f"{trained} of {rows_in} rows trained" + (f"; dropped {why}" if why else "; none dropped")


def _num(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def summary_lines(s: dict[str, Any]) -> list[str]:
    """The summary as plain lines (one fact each, grep-able)."""
    lines = []
    steps = f"{s.get('steps')} step{'' if s.get('steps') == 1 else 's'}" + (f" (resumed at step {s['resumed_from']})" if s.get("resumed_from") else "")
    if s.get("seconds") is not None:
        steps += f" in {s['seconds']} s"
    lines.append(f"trained   {steps} on {s.get('dataset')}")
    if s.get("rows_trained") is not None:
        lines.append("rows      " + rows_line(s["rows_trained"], s.get("rows_in"), s.get("rows_dropped", {})))
    if s.get("reference"):
        r = s["reference"]
        lines.append("reference " + " ".join(str(r[k]) for k in ("status", "ref", "model") if k in r))
    if s.get("final"):
        lines.append("final     " + " ".join(f"{k} {_num(v)}" for k, v in s["final"].items()))
    if s.get("eval"):
        lines.append("eval      " + " ".join(f"{k} {_num(v)}" for k, v in s["eval"].items()))
    for key, label in (("final_model", "model    "), ("metrics", "metrics  "), ("run_json", "run.json ")):
        if s.get(key):
            lines.append(f"{label} {s[key]}")
    if s.get("disk"):
        d = s["disk"]
        lines.append(f"disk      {d.get('total_mb')} MB in {s.get('output_dir')}"
                     + (f" ({d.get('checkpoints_mb')} MB checkpoints)" if d.get("checkpoints_mb") is not None else ""))
    return lines
