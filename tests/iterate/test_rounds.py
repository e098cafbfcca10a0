"""A two-round run on a tiny random Llama, end to end: per round a generations, a data and eval versions in the
catalog, a checkpoint, the lineage chain (round k's data names round k-1's checkpoint as its parent, every
round's config hash), `prefdata log` showing the chain, and `reference: previous_round` really training round 1
against round 0's checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from iterate_kit import cli


def _lineages(cat, name):
    return [cat.lineage(name, v["version"]) for v in cat.versions(name)]


def test_catalog_versions_lineage_chain_checkpoints_and_eval_tables(two_rounds):
    from catalog import Catalog

    cat = Catalog.open(two_rounds.catalog)
    s = two_rounds.summary
    start = s["start"]["policy"]
    ckpt = [r["checkpoint"] for r in s["rounds"]]
    out = two_rounds.dir / "out"
    assert ckpt == [str(out / "round-000" / "train" / "final"), str(out / "round-001" / "train" / "final")]
    for c in ckpt:
        assert (Path(c) / "config.json").is_file()
        assert sorted(p.name for p in (Path(c).parent / "checkpoints").iterdir())[0] == "step-000001"

    gens = _lineages(cat, "it-generations")
    assert [(g["iterate"]["round"], g["iterate"]["phase"], g["rows"]) for g in gens] == [(0, "generate", 32),
                                                                                        (1, "generate", 32)]
    # round 0 samples come from the start policy, round 1's from round 0's checkpoint
    assert [g["parent"]["checkpoint"] for g in gens] == [start, ckpt[0]]
    data = _lineages(cat, "it-data")
    builds = [d for d in data if d["builder"] == "iterate.build"]
    refs = [d for d in data if d["builder"] == "reference_pass"]
    assert [d["version"] for d in data] == [1, 2, 3, 4] and len(builds) == len(refs) == 2
    assert [b["parent"]["checkpoint"] for b in builds] == [start, ckpt[0]]
    assert builds[1]["parent"]["round"] == 0 and builds[0]["parent"]["round"] is None
    assert builds[1]["inputs"] == ["it-generations@2", ckpt[0]]
    assert [r["inputs"] for r in refs] == [["it-data@1"], ["it-data@3"]]
    # the reference of round 1 is round 0's checkpoint (previous_round), of round 0 the start policy
    assert [r["reference"]["model"] for r in refs] == [start, ckpt[0]]
    # every round's config hash, and they differ (the policy path is part of a round's config)
    hashes = [b["config_sha256"] for b in builds]
    assert all(len(h) == 64 for h in hashes) and hashes[0] != hashes[1]
    assert builds[0]["iterate"]["recipe_sha256"] == builds[1]["iterate"]["recipe_sha256"]
    assert [b["rows"] for b in builds] == [r["pairs"] for r in s["rounds"]]

    evals = _lineages(cat, "it-eval")
    assert [(e["eval"]["checkpoint"]["path"], e["eval"]["baseline"]["path"]) for e in evals] == \
        [(ckpt[0], start), (ckpt[1], start), (ckpt[1], ckpt[0])]
    table = cat.read("it-eval", 1)
    for col in ("prompt_id", "prompt", "response", "baseline_response", "winner", "score_short",
                "baseline_score_short", "length", "baseline_length", "logratio"):
        assert col in table.column_names
    assert table.num_rows == 6                                   # the held-out prompts
    held = set(cat.read(cat.names()[cat.names().index("it-eval-prompts")]).column("prompt_id").to_pylist())
    trained = set()
    for g in gens:
        trained |= set(cat.read("it-generations", g["version"]).column("prompt_id").to_pylist())
    assert len(held) == 6 and len(trained) == 16 and not held & trained   # 8 fresh prompts a round, none held out

    rounds = _lineages(cat, "it-rounds")
    assert [r["iterate"]["round"] for r in rounds] == [0, 1] and [r["rows"] for r in rounds] == [1, 2]
    assert rounds[1]["parent"]["checkpoint"] == ckpt[0] and rounds[1]["checkpoint"]["path"] == ckpt[1]
    assert rounds[1]["inputs"] == ["it-generations@2", "it-data@3", "it-eval@2", "it-eval@3", ckpt[0], ckpt[1]]
    events = [e for e in cat.events("it-data") if e["kind"] == "iterate_round"]
    assert sorted((e["version"], e["record"]["round"], e["record"]["checkpoint"]) for e in events) == \
        [(2, 0, ckpt[0]), (4, 1, ckpt[1])]

    saved = json.loads((out / "rounds.json").read_text())
    r0, r1 = saved["rounds"]
    assert r1["win_rate_vs_start"] == evals[1]["eval"]["summary"]["win_rate"]
    assert r1["win_rate_vs_previous"] == evals[2]["eval"]["summary"]["win_rate"]
    assert r0["pass_rate"]["short"] == evals[0]["eval"]["summary"]["scorers"]["short"]["model_mean"]
    assert saved["start"]["pass_rate"]["short"] == evals[0]["eval"]["summary"]["scorers"]["short"]["baseline_mean"]
    assert r0["kl_to_start"] == evals[0]["eval"]["summary"]["kl"]["mean"]
    t1 = cat.read("it-eval", 2)                                  # round 1 against the start policy
    diff = [a - b for a, b in zip(t1.column("score_short").to_pylist(), t1.column("baseline_score_short").to_pylist(),
                                  strict=True)]
    g = r1["pass_rate_gain_vs_start"]["short"]
    assert g["gain"] == pytest.approx(sum(diff) / len(diff)) and g["ci"][0] <= g["gain"] <= g["ci"][1]
    lo, hi = r1["pass_rate_ci"]["short"]
    assert lo <= r1["pass_rate"]["short"] <= hi
    assert set(r0["seconds"]) == {"generate", "build", "train", "policy", "eval", "record"}
    assert r0["cross_model_share"] == 0.0                       # one generator: every pair is self-generated
    assert "win_rate_vs_previous" not in r0                     # round 0's previous policy is the start

    log = cli("log", "it-rounds", "--catalog", str(two_rounds.catalog), "--json", cwd=two_rounds.dir)
    assert log.returncode == 0, log.stderr
    recs = [r for r in json.loads(log.stdout) if r.get("type") == "version"]
    assert [(r["iterate"]["round"], r["parent"]["checkpoint"]) for r in recs] == [(1, ckpt[0]), (0, start)]
    text = cli("log", "it-data", "--catalog", str(two_rounds.catalog), cwd=two_rounds.dir)
    assert text.returncode == 0 and "iterate_round" in text.stdout and "parent" in text.stdout


def _direct_logps(model_dir: Path, prompts: list[str], responses: list[str]) -> list[float]:
    """Summed response log-probs with a plain forward of the model (no trainer code but the tokenization)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.encode import encode_groups

    tok = AutoTokenizer.from_pretrained(model_dir)
    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    enc = encode_groups(tok, prompts, [[r] for r in responses], max_length=64)
    out = []
    with torch.no_grad():
        for g in enc.groups:
            ids = torch.tensor([g.prompt_ids + g.response_ids[0]])
            logp = torch.log_softmax(lm(input_ids=ids).logits[0, :-1].double(), -1)
            tgt = ids[0, 1:]
            n = len(g.prompt_ids)
            out.append(float(logp[n - 1:, :].gather(1, tgt[n - 1:, None]).sum()))
    return out


def test_previous_round_reference_is_the_previous_checkpoint(two_rounds):
    from catalog import Catalog

    cat = Catalog.open(two_rounds.catalog)
    s = two_rounds.summary
    table = cat.read("it-data", 4)          # round 1's data with its reference log-probs
    prompts, chosen = table.column("prompt").to_pylist(), table.column("chosen").to_pylist()
    stored = table.column("ref_logp_chosen").to_pylist()
    prev = _direct_logps(Path(s["rounds"][0]["checkpoint"]), prompts, chosen)
    start = _direct_logps(Path(s["start"]["policy"]), prompts, chosen)
    assert stored == pytest.approx(prev, abs=1e-4)
    assert max(abs(a - b) for a, b in zip(stored, start, strict=True)) > 1e-2     # not the start model's


def test_report_draws_the_per_round_metrics(two_rounds, tmp_path):
    from catalog import Catalog
    from prefdata.report import write_report

    index = write_report(Catalog.open(two_rounds.catalog), "it-rounds", tmp_path / "rep")
    page = index.read_text()
    for title in ("held-out win rate (95% bootstrap interval)", "held-out verifier pass rate", "KL(policy ‖ start)",
                  "training pairs kept per round", "mean held-out response length", "Wall time per phase"):
        assert title in page
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    saved = json.loads((two_rounds.dir / "out" / "rounds.json").read_text())
    assert rep["kind"] == "iterate_rounds"
    assert [r["win_rate_vs_start"] for r in rep["rounds"]] == [r["win_rate_vs_start"] for r in saved["rounds"]]
    assert [r["pass_rate"] for r in rep["rounds"]] == [r["pass_rate"] for r in saved["rounds"]]
    assert rep["start"]["pass_rate"] == saved["start"]["pass_rate"]
    assert set(rep["seconds"]) == {"0", "1"} and set(rep["seconds"]["0"]) == {"generate", "build", "train", "policy",
                                                                              "eval", "record"}
