"""Round variants on the tiny Llama: LoRA rounds with APO momentum (the next policy is exactly
x_k + α (x_k − x_{k−1}) of the merged weights), `reference: initial`, a self-rewarding judge whose model is the
current policy, `stop: {min_gain}`, and a round that yields no pairs (one line, exit 2, nothing half-written)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from iterate_kit import cli, recipe


def _run(path: Path, cat: Path, **kw) -> dict:
    import torch

    from catalog import Catalog
    from prefdata.iterate import iterate

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return iterate(path, catalog=Catalog.open(cat), progress=False, **kw)
    finally:
        torch.set_num_threads(before)


def _edit(path: Path, fn) -> Path:
    data = yaml.safe_load(path.read_text())
    fn(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _weights(folder) -> dict:
    from safetensors.torch import load_file
    return load_file(str(Path(folder) / "model.safetensors"))


@pytest.fixture(scope="module")
def lora_apo_run(tmp_path_factory, tiny_policy):
    tmp = tmp_path_factory.mktemp("iter_lora")
    judge = {"kind": "judge", "name": "self", "model": {"name": "self", "path": "policy", "device": "cpu"},
             "sampling": {"temperature": 0.0, "max_new_tokens": 3}}

    def change(d):
        d["train"].update(lora={"r": 2, "alpha": 4.0, "target_modules": ["q_proj", "v_proj"]}, momentum=0.5,
                          reference="initial")
        # the policy judges its own samples (self-rewarding). A random model's judgments do not parse: they are
        # kept as a null `score` (moved out of `scores`, which the pairs carry into training) and a second score
        # step lets the rule decide the pairs
        rule = d["steps"][0]["score"]["scorers"][0]
        d["steps"][0] = {"score": {"scorers": [judge, rule], "set_score": "self", "move_set_score": True,
                                   "on_unscorable": "keep"}}
        d["steps"].insert(1, {"score": {"scorers": [{**rule, "name": "short2"}], "set_score": "short2"}})
    path = _edit(recipe(tmp, tiny_policy, name="lo", with_eval=False), change)
    return tmp, _run(path, tmp / "cat")


def test_lora_rounds_merge_and_apo_extrapolation_by_hand(lora_apo_run):
    tmp, s = lora_apo_run
    start = _weights(s["start"]["policy"])
    r0, r1 = s["rounds"]
    assert Path(r0["trained"]) == tmp / "out" / "round-000" / "trained"           # the adapter merged into s_0
    assert Path(r0["checkpoint"]) == tmp / "out" / "round-000" / "next_policy"
    x0, s1 = _weights(r0["trained"]), _weights(r0["checkpoint"])
    x1, s2 = _weights(r1["trained"]), _weights(r1["checkpoint"])
    assert r1["policy"] == r0["checkpoint"]                                      # round 1 starts from s_1
    for key, w in start.items():
        want1 = (x0[key].double() + 0.5 * (x0[key].double() - w.double())).float()      # x_{-1} = s_0
        want2 = (x1[key].double() + 0.5 * (x1[key].double() - x0[key].double())).float()
        assert s1[key].equal(want1) and s2[key].equal(want2), key
        if "q_proj" in key or "v_proj" in key:
            assert not x0[key].equal(w), key                                    # LoRA moved these...
        else:
            assert x0[key].equal(w) and s1[key].equal(w), key                   # ... and nothing else


def test_reference_initial_and_the_self_rewarding_judge_use_the_right_models(lora_apo_run):
    from catalog import Catalog

    tmp, s = lora_apo_run
    cat = Catalog.open(tmp / "cat")
    lins = [cat.lineage("lo-data", v["version"]) for v in cat.versions("lo-data")]
    refs = [x["reference"]["model"] for x in lins if x["builder"] == "reference_pass"]
    assert refs == [s["start"]["policy"]] * 2                               # reference: initial, every round
    builds = [x for x in lins if x["builder"] == "iterate.build"]
    judges = [b["steps"][0]["config"]["scorers"][0]["model"]["path"] for b in builds]
    assert judges == [s["start"]["policy"], s["rounds"][0]["checkpoint"]]   # the judge is the round's policy
    gens = cat.read("lo-data", builds[1]["version"])
    assert "judgment_self_chosen" in gens.column_names


def test_stop_when_the_held_out_metric_stops_improving(tmp_path, tiny_policy):
    path = _edit(recipe(tmp_path, tiny_policy, name="st", rounds=3),
                 lambda d: d.update(stop={"min_gain": 2.0, "metric": "win_rate"}))   # a gain no round can make
    s = _run(path, tmp_path / "cat")
    assert [r["round"] for r in s["rounds"]] == [0]
    stop = s["rounds"][0]["stop_metric"]
    assert stop["previous"] == 0.5 and stop["gain"] == pytest.approx(stop["value"] - 0.5)
    assert s["stopped"]["round"] == 0 and "win_rate gained" in s["stopped"]["reason"]
    assert json.loads((tmp_path / "out" / "rounds.json").read_text())["stopped"] == s["stopped"]
    s2 = _run(path, tmp_path / "cat", resume=True)                       # a resumed stopped run stays stopped
    assert [r["round"] for r in s2["rounds"]] == [0]


def test_a_round_without_pairs_stops_with_one_line(tmp_path, tiny_policy):
    from catalog import Catalog

    def every_answer_passes(d):
        d["steps"][0]["score"]["scorers"][0]["max"] = 100000
    path = _edit(recipe(tmp_path, tiny_policy, name="np", with_eval=False), every_answer_passes)
    res = cli("iterate", str(path), "--catalog", str(tmp_path / "cat"), cwd=tmp_path)
    assert res.returncode == 2
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error: round 0: the steps made no training pairs from the 32 samples of "
                           "np-generations@1 (dropped: 32 pairs: tied with every other response)")
    cat = Catalog.open(tmp_path / "cat")
    assert "np-data" not in cat.names() and len(cat.versions("np-generations")) == 1
    state = json.loads((tmp_path / "out" / "iterate_state.json").read_text())
    assert state["failed"]["round"] == 0 and "build" not in state["rounds"][0]["phases"]


def test_a_finished_run_continues_for_more_rounds_with_resume(tmp_path, tiny_policy):
    from catalog import Catalog

    path = recipe(tmp_path, tiny_policy, name="more", rounds=1, with_eval=False)
    first = _run(path, tmp_path / "cat")
    assert [r["round"] for r in first["rounds"]] == [0]
    _edit(path, lambda d: d.update(rounds=2))
    more = _run(path, tmp_path / "cat", resume=True)
    assert [r["round"] for r in more["rounds"]] == [0, 1]
    same = lambda r: {k: v for k, v in r.items() if k != "seconds"}     # noqa: E731
    assert same(more["rounds"][0]) == same(first["rounds"][0])           # round 0 was not redone
    assert more["rounds"][1]["policy"] == first["rounds"][0]["checkpoint"]
    cat = Catalog.open(tmp_path / "cat")
    assert len(cat.versions("more-generations")) == 2
    _edit(path, lambda d: d["train"]["train"].update(lr=1e-4))             # anything else changed: refused
    with pytest.raises(Exception, match="the recipe changed since the run started"):
        _run(path, tmp_path / "cat", resume=True)
    with pytest.raises(Exception, match="holds an iterate run: resume it"):
        _run(path, tmp_path / "cat")
