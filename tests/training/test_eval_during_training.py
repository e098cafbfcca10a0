"""Eval during training (the recipe's `eval:` section, training/evaluation.py) on real HH-RLHF pairs with a tiny
random Llama: step-0 values worked by hand (policy == reference), eval metrics equal a separate forward of the saved
checkpoint, training losses unchanged by eval, split-aware training, resume without duplicated eval rows, the
default reference (the starting policy), the metric helpers against scipy, and one-line recipe errors."""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from training_kit import recipe_error, shortest_prompt_pairs

from training.evaluation import EvalHook, EvalSums, add_lists, list_metrics, preference_metrics
from training.recipe import load_train_recipe
from training.reference import compute_reference
from training.run import load_model, train_from_recipe

ROOT = Path(__file__).resolve().parents[2]
LN2_F32 = torch.tensor(math.log(2), dtype=torch.float32).item()   # -log sigmoid(0) in the policy's float32
TIMING = {"tokens_per_s", "examples_per_s", "step_time_s", "peak_memory_mb", "eval/seconds"}


def write_recipe(tmp: Path, name: str, **over) -> Path:
    import yaml
    r = {"model": str(over.pop("model")), "dataset": str(over.pop("dataset")),
         "loss": over.pop("loss", {"name": "dpo_sigmoid", "beta": 0.1}),
         "output_dir": str(over.pop("output_dir", tmp / name.removesuffix(".yaml"))),
         "train": {"batch_size": 4, "max_length": 160, "lr": 3e-3, "warmup_ratio": 0.0, "seed": 0,
                   **over.pop("train", {})}}
    r.update(over)
    p = tmp / name
    p.write_text(yaml.safe_dump(r))
    return p


def rows(out_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


def evals(out_dir: Path) -> list[dict]:
    return [r for r in rows(out_dir) if "eval/loss" in r]


def trains(out_dir: Path) -> list[dict]:
    return [r for r in rows(out_dir) if "loss" in r]


@pytest.fixture(scope="module")
def data(tmp_path_factory, hh_pairs):
    """24 real pairs (shortest prompts): a split table (16 train / 8 test, alternating by thirds) and the 8 test
    rows alone as an eval file."""
    tmp = tmp_path_factory.mktemp("evaldata")
    pairs = pq.read_table(shortest_prompt_pairs(hh_pairs, 24, tmp / "pairs24.parquet"))
    split = ["test" if i % 3 == 2 else "train" for i in range(24)]
    table = pairs.append_column("split", pa.array(split))
    pq.write_table(table, tmp / "split.parquet")
    test = table.filter(pa.array([s == "test" for s in split]))
    pq.write_table(test.drop_columns(["split"]), tmp / "heldout.parquet")
    pq.write_table(pairs.slice(0, 16), tmp / "plain.parquet")
    return {"split": tmp / "split.parquet", "heldout": tmp / "heldout.parquet", "plain": tmp / "plain.parquet",
            "table": table}


def test_step0_eval_is_worked_by_hand_and_the_reference_defaults_to_the_starting_policy(tmp_path, tiny_model_dir,
                                                                                         data, capfd):
    # no `reference` section: the reference pass runs the starting policy, so at step 0 policy == reference
    res = train_from_recipe(write_recipe(tmp_path, "r.yaml", model=tiny_model_dir, dataset=data["plain"],
                                         eval={"dataset": str(data["heldout"]), "every": 2},
                                         train={"max_steps": 3}))
    err = capfd.readouterr().err
    assert err.count("the reference is the starting policy") == 1
    assert res["reference"]["status"] == "computed" and "starting policy" in res["reference"]["note"]
    assert res["reference"]["eval"]["status"] == "computed"
    e = evals(res["output_dir"])
    assert [r["step"] for r in e] == [0, 2, 3]                    # before training, every 2 steps, at the end
    assert all(k == "step" or k.startswith("eval/") for r in e for k in r)
    zero = e[0]
    assert zero["eval/rows"] == 8
    assert zero["eval/chosen_logp_shift"] == 0.0 and zero["eval/rejected_logp_shift"] == 0.0
    assert zero["eval/loss"] == LN2_F32                           # -log sigmoid(0), exactly
    assert zero["eval/reward_accuracy"] == 0.0 and zero["eval/margin"] == 0.0   # rewards tie at 0 (strict >)
    assert zero["eval/likelihood_displacement"] is False
    assert res["eval"] == e[-1] and res["eval_rows"]["rows"] == 8
    # training rows keep their fields and steps
    assert [r["step"] for r in trains(res["output_dir"])] == [1, 2, 3]


def _by_hand(final_model: Path, eval_table: pa.Table, beta: float) -> dict:
    """The eval metrics recomputed from the saved checkpoint with the reference pass's own function."""
    lm, tok = load_model(str(final_model), trust_remote_code=False)
    pol = compute_reference(lm, tok, eval_table, max_length=160, device="cpu", token_budget=1024)
    pc = torch.tensor(pol["ref_logp_chosen"].to_pylist(), dtype=torch.float64)
    pr = torch.tensor(pol["ref_logp_rejected"].to_pylist(), dtype=torch.float64)
    rc = torch.tensor(eval_table["ref_logp_chosen"].to_pylist(), dtype=torch.float64)
    rr = torch.tensor(eval_table["ref_logp_rejected"].to_pylist(), dtype=torch.float64)
    wc, wr = beta * (pc - rc), beta * (pr - rr)
    return {"eval/loss": (-F.logsigmoid(wc - wr)).mean().item(),
            "eval/reward_accuracy": (wc > wr).double().mean().item(), "eval/margin": (wc - wr).mean().item(),
            "eval/chosen_logp": pc.mean().item(), "eval/rejected_logp": pr.mean().item(),
            "eval/chosen_logp_shift": (pc - rc).mean().item(), "eval/rejected_logp_shift": (pr - rr).mean().item()}


def test_split_table_trains_train_rows_and_eval_equals_a_separate_forward(tmp_path, tiny_model_dir, data):
    res = train_from_recipe(write_recipe(tmp_path, "r.yaml", model=tiny_model_dir, dataset=data["split"],
                                         reference={"model": str(tiny_model_dir)}, eval={"every": 0},
                                         train={"epochs": 1}))
    # 16 train rows in batches of 4: four steps; the 8 test rows are never trained
    assert res["rows_by_split"] == {"train": 16, "test": 8} and res["rows_in"] == 16 and res["steps"] == 4
    assert sum(r["examples"] for r in trains(res["output_dir"])) == 16
    e = evals(res["output_dir"])
    assert [r["step"] for r in e] == [0, 4] and e[-1]["eval/rows"] == 8
    assert res["eval_rows"]["source"] == f"{data['split']} split=test"
    # the stored reference (one parquet for the whole table, test rows included) + the final checkpoint
    stored = pq.read_table(next((tmp_path / "r" / "reference").glob("*.parquet")))
    test_rows = stored.filter(pa.compute.equal(stored["split"], "test"))
    want = _by_hand(Path(res["final_model"]), test_rows, beta=0.1)
    for k, v in want.items():
        assert e[-1][k] == pytest.approx(v, rel=1e-6, abs=1e-9), k
    assert e[-1]["eval/likelihood_displacement"] == (max(want["eval/chosen_logp_shift"],
                                                         want["eval/rejected_logp_shift"]) < -0.01)


def test_eval_leaves_training_bit_identical_and_resume_repeats_no_eval_row(tmp_path, tiny_model_dir, data):
    common = {"model": tiny_model_dir, "dataset": data["split"], "train": {"max_steps": 4, "save_every": 2, "optimizer_state": "all"}}
    plain = train_from_recipe(write_recipe(tmp_path, "plain.yaml", **common))
    with_eval = train_from_recipe(write_recipe(tmp_path, "ev.yaml", eval={"split": "test", "every": 2}, **common))
    a, b = trains(plain["output_dir"]), trains(with_eval["output_dir"])
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in a] == \
        [{k: v for k, v in r.items() if k not in TIMING} for r in b]     # every training value, bit for bit
    full = [{k: v for k, v in r.items() if k not in TIMING} for r in rows(with_eval["output_dir"])]
    assert [r["step"] for r in full] == [0, 1, 2, 2, 3, 4, 4]
    # a run killed after its step-4 eval row but before the step-4 checkpoint: resume from step 2
    out = Path(with_eval["output_dir"])
    shutil.rmtree(out / "checkpoints" / "step-000004")
    again = train_from_recipe(write_recipe(tmp_path, "ev2.yaml", output_dir=out, eval={"split": "test", "every": 2},
                                           **common), resume=True)
    assert again["resumed_from"] == 2
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in rows(out)] == full
    assert {k: v for k, v in again["eval"].items() if k not in TIMING} == full[-1]


@pytest.mark.parametrize("loss, extra, want", [
    # KTO: desirable lambda_D (1 - s(0)) and undesirable lambda_U (1 - s(0)): 0.5 each; rewards 0: none correct
    ({"name": "kto", "beta": 0.1}, {"unpaired": {"from_pairs": True}},
     {"eval/loss": 0.5, "eval/accuracy": 0.0, "eval/examples": 16, "eval/rows": 8}),
    # reference-free SimPO: no reference, no shifts
    ({"name": "simpo", "beta": 2.0, "gamma": 0.5}, {}, {"eval/rows": 8}),
])
def test_step0_kto_and_reference_free(tmp_path, tiny_model_dir, data, loss, extra, want):
    res = train_from_recipe(write_recipe(tmp_path, "r.yaml", model=tiny_model_dir, dataset=data["split"], loss=loss,
                                         eval={"dataset": str(data["heldout"])}, train={"max_steps": 1}, **extra))
    zero = evals(res["output_dir"])[0]
    assert {k: zero[k] for k in want} == want
    if loss["name"] == "simpo":
        assert "eval/chosen_logp_shift" not in zero and res["reference"]["status"] == "not needed"


def test_list_eval_at_step0(tmp_path, tiny_model_dir, arena_lists):
    p = tmp_path / "lists.parquet"
    pq.write_table(arena_lists.take([0, 1, 4, 5]), p)    # short prompts: no row is dropped at max_length 96
    res = train_from_recipe(write_recipe(tmp_path, "r.yaml", model=tiny_model_dir, dataset=p,
                                         loss={"name": "plackett_luce_dpo", "beta": 0.1}, eval={"dataset": str(p)},
                                         train={"max_steps": 1, "max_length": 96}))
    zero = evals(res["output_dir"])[0]
    # every implicit reward is 0 (policy == reference): a prompt's top-1 credit is #top-labelled / #responses;
    # scores [10, 10, 7, 2], [9, 8, 2, 1], [10, 4, 2, 1], [10, 8, 6, 1]; Kendall's tau-b is undefined (all tied)
    assert zero["eval/rows"] == 4 and zero["eval/top1_accuracy"] == (2 / 4 + 1 / 4 + 1 / 4 + 1 / 4) / 4
    assert zero["eval/kendall_tau"] is None and zero["eval/kendall_tau_undefined"] == 4


def test_kendall_tau_b_and_top1_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    r = torch.tensor([[0.3, -1.0, 2.0, 0.3], [1.0, 2.0, 3.0, 0.0], [0.5, 0.5, 0.1, 9.0], [0.0, 0.0, 0.0, 0.0]],
                     dtype=torch.float64)
    s = torch.tensor([[1.0, 0.0, 3.0, 1.0], [3.0, 2.0, 1.0, 0.0], [2.0, 2.0, 1.0, 5.0], [1.0, 2.0, 3.0, 0.0]],
                     dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    sums = EvalSums()
    from training.losses import LossOut
    add_lists(sums, LossOut(loss=torch.zeros(4, dtype=torch.float64)), r, s, mask)
    m = list_metrics(sums.read())
    taus = [stats.kendalltau(r[i][mask[i]].numpy(), s[i][mask[i]].numpy()).statistic for i in range(4)]
    defined = [t for t in taus if not math.isnan(t)]
    assert len(defined) == 3 and m["kendall_tau_undefined"] == 1      # all rewards tied: tau-b undefined
    assert m["kendall_tau"] == pytest.approx(sum(defined) / 3, rel=1e-12)
    # top-1: row 0 argmax 2.0 is the top label (1); row 1 argmax 3.0 has label 1, not the best 3 (0);
    # row 2 argmax 0.5 tie over labels 2, 2 among valid (best 2): 1; row 3 all tied: 1 of 4 is top-labelled
    assert m["top1_accuracy"] == pytest.approx((1 + 0 + 1 + 0.25) / 4, rel=1e-12)


def test_eval_hook_restores_rng_and_warns_on_likelihood_displacement():
    def draws():   # a metrics function that consumes the global RNG, and reports both shifts negative
        torch.rand(5)
        return {"loss": 0.5, "chosen_logp_shift": -0.25, "rejected_logp_shift": -1.5,
                "likelihood_displacement": True}
    torch.manual_seed(3)
    want = torch.rand(3)
    torch.manual_seed(3)
    buf = io.StringIO()
    row = EvalHook(draws, every=5)(10, Console(file=buf, width=300))
    assert torch.equal(torch.rand(3), want)                       # the eval drew nothing from training's stream
    assert row["step"] == 10 and row["eval/likelihood_displacement"] is True
    text = buf.getvalue()
    assert text.count("likelihood displacement") == 1 and "-0.25" in text and "-1.5" in text
    hook = EvalHook(draws, every=5)
    assert [s for s in range(13) if hook.due(s, 12)] == [0, 5, 10, 12]
    assert [s for s in range(5) if EvalHook(draws, every=0).due(s, 4)] == [0, 4]


def test_preference_metrics_on_a_loaded_model(tiny_model_dir, data):
    lm, tok = load_model(str(tiny_model_dir), trust_remote_code=False)
    table = pq.read_table(data["heldout"])
    m = preference_metrics(lm, tok, table, loss="dpo_sigmoid", loss_params={"beta": 0.1}, max_length=160,
                           batch_size=16, reference_lm=lm)
    assert m["eval/loss"] == LN2_F32 and m["eval/chosen_logp_shift"] == 0.0 and m["eval/rows"] == 8
    # the table's own reference columns win over reference_lm; a reference above the policy: displacement
    ref = table.append_column("ref_logp_chosen", pa.array([0.0] * 8)).append_column("ref_logp_rejected",
                                                                                      pa.array([0.0] * 8))
    d = preference_metrics(lm, tok, ref, loss="dpo_sigmoid", max_length=160)
    assert d["eval/chosen_logp_shift"] == pytest.approx(m["eval/chosen_logp"], rel=1e-12)
    assert d["eval/likelihood_displacement"] is True
    # shifts within the forward-noise tolerance (-0.01 nats) are not displacement
    from training.evaluation import pair_metrics
    near = {"rows": 2.0, "loss": 1.0, "chosen_logp": -2.0, "rejected_logp": -4.0}
    assert pair_metrics({**near, "chosen_shift": -0.018, "rejected_shift": -0.04}, True)["likelihood_displacement"] \
        is False                                                 # means -0.009, -0.02
    assert pair_metrics({**near, "chosen_shift": -0.022, "rejected_shift": -0.04}, True)["likelihood_displacement"]
    free = preference_metrics(lm, tok, table, loss="dpo_sigmoid", max_length=160)   # no reference at all
    assert "eval/chosen_logp_shift" not in free and free["eval/chosen_logp"] == m["eval/chosen_logp"]


def test_recipe_checks(tmp_path, data, arena_lists):
    lists = tmp_path / "lists.parquet"
    pq.write_table(arena_lists.slice(0, 4), lists)
    base = {"model": "some/model", "dataset": data["plain"]}
    e = recipe_error(write_recipe(tmp_path, "a.yaml", **base, eval={"dataset": str(lists)}))
    assert e.path == "eval.dataset" and "pairs table" in str(e)
    e = recipe_error(write_recipe(tmp_path, "b.yaml", **base, eval={"split": "test"}))
    assert e.path == "eval.split" and "no `split` column" in str(e)
    e = recipe_error(write_recipe(tmp_path, "c.yaml", **{**base, "dataset": data["split"]}, eval={"split": "dev"}))
    assert e.path == "eval.split" and "16 'train'" in str(e) and "8 'test'" in str(e)
    e = recipe_error(write_recipe(tmp_path, "d.yaml", **base, eval={"dataset": str(lists), "split": "test"}))
    assert e.path == "eval"
    e = recipe_error(write_recipe(tmp_path, "e.yaml", **base, eval={"dataset": str(tmp_path / "nope.parquet")}))
    assert e.path == "eval.dataset"
    # the training reference is the table's own columns: the eval table must carry them too
    withref = tmp_path / "withref.parquet"
    t = pq.read_table(data["plain"])
    pq.write_table(t.append_column("ref_logp_chosen", pa.array([-1.0] * 16))
                   .append_column("ref_logp_rejected", pa.array([-2.0] * 16)), withref)
    e = recipe_error(write_recipe(tmp_path, "f.yaml", **{**base, "dataset": withref},
                                  eval={"dataset": str(data["heldout"])}))
    assert e.path == "eval.dataset" and "ref_logp_chosen" in str(e)
    # `eval: {}` means the test split; a table whose rows are all held out cannot train
    assert load_train_recipe(write_recipe(tmp_path, "g.yaml", **{**base, "dataset": data["split"]},
                                          eval={})).eval.split == "test"
    all_test = tmp_path / "alltest.parquet"
    pq.write_table(t.append_column("split", pa.array(["test"] * 16)), all_test)
    e = recipe_error(write_recipe(tmp_path, "h.yaml", **{**base, "dataset": all_test}))
    assert e.path == "dataset" and "no 'train' rows" in str(e)


@pytest.mark.parametrize("eval_section, where", [({"split": "test"}, "eval.split"),
                                                 ({"dataset": "LISTS"}, "eval.dataset")])
def test_cli_bad_eval_input_is_one_line_exit_2(tmp_path, data, arena_lists, eval_section, where):
    lists = tmp_path / "lists.parquet"
    pq.write_table(arena_lists.slice(0, 4), lists)
    ev = {k: (str(lists) if v == "LISTS" else v) for k, v in eval_section.items()}
    recipe = write_recipe(tmp_path, "r.yaml", model=tmp_path / "never-loaded", dataset=data["plain"], eval=ev)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "prefdata.cli", "train", str(recipe)], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{where}:" in lines[0] and str(recipe) in lines[0]


def test_ddp_two_processes_evaluate_on_the_main_process(tmp_path, tiny_model_dir, data):
    """torchrun, 2 gloo processes: the main process evaluates alone (no hang at the next gradient sync); its eval
    rows equal a one-process run's, and the training rows too (the DDP test's tolerances)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = {"model": tiny_model_dir, "dataset": data["plain"], "eval": {"dataset": str(data["heldout"]), "every": 1},
              "train": {"max_steps": 2}}
    one = train_from_recipe(write_recipe(tmp_path, "one.yaml", **common))
    recipe = write_recipe(tmp_path, "ddp.yaml", **common)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                        "127.0.0.1", "--master_port", str(port), "-m", "prefdata.cli", "train", str(recipe), "--json"],
                       env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = rows(one["output_dir"]), rows(tmp_path / "ddp")
    assert [x["step"] for x in b] == [x["step"] for x in a] == [0, 1, 1, 2, 2]
    assert b[0]["eval/loss"] == LN2_F32 and b[0]["eval/chosen_logp_shift"] == 0.0
    for x, y in zip(a, b, strict=True):
        for k in ("loss", "eval/loss", "eval/margin", "eval/chosen_logp", "eval/rejected_logp_shift"):
            if k in x:
                assert y[k] == pytest.approx(x[k], rel=1e-5, abs=1e-6), k
    assert json.loads((tmp_path / "ddp" / "run.json").read_text())["eval"]["step"] == 2
