"""SIGKILL inside each phase (generate, build, train, eval) of a real `prefdata iterate` subprocess, then
`--resume`: the catalog holds exactly the versions of the uninterrupted run with the same rows (content hashes),
no duplicate, and the training losses and per-round metrics are the uninterrupted run's.

The kill points come from the runner's test hook (PREFDATA_TEST_PAUSE_AT, prefdata/iterate.py): the process
stops itself mid-phase — after the first generation shard of round 1, after round 0's data version is written but
before the state records it, once round 1's first training checkpoint exists, after round 1's first eval version
is written — and the test SIGKILLs it there."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from iterate_kit import cli, recipe, run_and_kill

DATASETS = ("it-generations", "it-data", "it-eval", "it-eval-prompts")
TRAIN_KEYS = ("step", "loss", "reward_accuracy", "margin", "grad_norm", "logps_chosen", "logps_rejected")
ROUND_KEYS = ("round", "prompts", "samples", "pairs", "cross_model_share", "win_rate_vs_start",
              "win_rate_vs_start_ci", "win_rate_vs_previous", "win_rate_vs_previous_ci", "kl_to_start",
              "mean_length", "pass_rate", "pass_rate_ci", "pass_rate_gain_vs_start", "scorers", "train")


def _hashes(cat_dir: Path) -> dict[str, list[str]]:
    from catalog import Catalog
    cat = Catalog.open(cat_dir)
    return {n: [v["content_hash"] for v in cat.versions(n)] for n in DATASETS}


def _train_metrics(out: Path) -> list[list[dict]]:
    return [[{k: row.get(k) for k in TRAIN_KEYS} for row in map(json.loads, (out / f"round-{k:03d}" / "train" /
                                                                           "metrics.jsonl").read_text().splitlines())]
            for k in range(2)]


def _rounds(out: Path) -> list[dict]:
    rounds = json.loads((out / "rounds.json").read_text())["rounds"]
    return [{k: r.get(k) for k in ROUND_KEYS} for r in rounds]


def resume_in_process(path: Path, cat_dir: Path) -> None:
    import torch

    from catalog import Catalog
    from prefdata.iterate import iterate

    before = torch.get_num_threads()
    torch.set_num_threads(1)          # as the subprocesses (OMP_NUM_THREADS=1) and the uninterrupted run
    try:
        iterate(path, catalog=Catalog.open(cat_dir), resume=True, progress=False)
    finally:
        torch.set_num_threads(before)


def _state(out: Path) -> dict:
    return json.loads((out / "iterate_state.json").read_text())


@pytest.mark.parametrize("point", ["generate@1", "build@0", "train@1", "eval@1"])
def test_sigkill_in_a_phase_then_resume_equals_the_uninterrupted_run(tmp_path, tiny_policy, two_rounds, point):
    from catalog import Catalog

    path = recipe(tmp_path, tiny_policy)
    cat_dir, out = tmp_path / "cat", tmp_path / "out"
    run_and_kill(path, cat_dir, point, out)
    phase, k = point.split("@")
    k = int(k)
    state = _state(out)
    assert phase not in state["rounds"][k]["phases"]                 # killed before the phase was recorded
    cat = Catalog.open(cat_dir)
    if phase == "build":      # the data version was written just before the kill: resume must not write it again
        assert [v["version"] for v in cat.versions("it-data")] == [1]
    if phase == "eval":
        assert len(cat.versions("it-eval")) == 2                     # round 0's, and round 1's first of two
    if phase == "train":
        assert any((out / "round-001" / "train" / "checkpoints").glob("step-*"))
        assert not (out / "round-001" / "train" / "final").exists()

    if point == "eval@1":     # through the command line once; in process otherwise (saves a start-up per test)
        res = cli("iterate", str(path), "--resume", "--catalog", str(cat_dir), cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
    else:
        resume_in_process(path, cat_dir)

    assert _hashes(cat_dir) == _hashes(two_rounds.catalog)
    assert _train_metrics(out) == _train_metrics(two_rounds.dir / "out")
    assert _rounds(out) == _rounds(two_rounds.dir / "out")
    events = [e["record"]["round"] for e in Catalog.open(cat_dir).events("it-data") if e["kind"] == "iterate_round"]
    assert sorted(events) == [0, 1]
    state = _state(out)
    assert state.get("finished") is True
    if phase == "generate":   # the committed shards were reused, not regenerated
        lin = Catalog.open(cat_dir).lineage("it-generations", 2)
        assert lin["info"]["shards_resumed"] >= 1
    if phase == "train":
        assert state["rounds"][1]["phases"]["train"]["resumed_from"] >= 1
