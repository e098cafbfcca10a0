"""KTO in the text trainer: first-step loss against a naive computation, parse-time errors, training on real
HH-RLHF data raises desirable rewards over undesirable ones, exact resume, and the example recipe via the CLI."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from training_kit import recipe_error, small_llama

from prefdata.errors import SchemaError
from training.data import DataOptions, build_train_data
from training.kto_data import kl_partners
from training.plan import make_plan
from training.recipe import load_train_recipe
from training.reference import compute_reference
from training.run import load_model, train_from_recipe

ROOT = Path(__file__).resolve().parents[2]
MAXLEN = 160


def _recipe(tmp: Path, name: str, **over) -> Path:
    r = {"model": str(over.pop("model")), "dataset": str(over.pop("dataset")),
         "loss": over.pop("loss", {"name": "kto", "beta": 0.1}), "output_dir": str(over.pop("output_dir", tmp / name)),
         "train": {"batch_size": 8, "max_length": MAXLEN, "lr": 3e-3, "warmup_ratio": 0.0, "seed": 0,
                   **over.pop("train", {})}}
    r.update(over)
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(r))
    return p


def _metrics(out_dir) -> list[dict]:
    return [json.loads(ln) for ln in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def short_pairs(hh_pairs):
    """The 24 real HH-RLHF pairs with the shortest prompts (a small max_length keeps them all)."""
    lens = [len(p) for p in hh_pairs.column("prompt").to_pylist()]
    return hh_pairs.take(sorted(range(len(lens)), key=lens.__getitem__)[:24])


@pytest.fixture(scope="module")
def files(tmp_path_factory, short_pairs):
    """TRL unpaired form (prompt, completion, label: chosen desirable, rejected undesirable) + the pairs."""
    d = tmp_path_factory.mktemp("kto")
    p, c, r = (short_pairs.column(n).to_pylist() for n in ("prompt", "chosen", "rejected"))
    unpaired = pa.table({"prompt": p + p, "completion": c + r, "label": [True] * len(p) + [False] * len(p)})
    pq.write_table(unpaired, d / "unpaired.parquet")
    pq.write_table(unpaired.drop_columns(["label"]), d / "nolabel.parquet")
    pq.write_table(unpaired.rename_columns(["prompt", "response", "score"]).set_column(
        2, "score", pa.array([1.0, 0.5] * len(p))), d / "scored.parquet")
    pq.write_table(short_pairs, d / "pairs.parquet")
    return d


def _naive_logp(lm, prompt_ids: list[int], resp_ids: list[int]) -> float:
    """One (prompt, response) as its own sequence, full-vocabulary logits, float64 log_softmax."""
    ids = torch.tensor([prompt_ids + resp_ids])
    with torch.no_grad():
        logits = lm(input_ids=ids).logits[0].double()
    lp = torch.log_softmax(logits[:-1], -1).gather(1, ids[0, 1:, None]).squeeze(1)
    return lp[len(prompt_ids) - 1:].sum().item()


def test_kl_partners_never_pair_a_prompt_with_itself():
    prompts = ["a", "a", "b", "c", "c", "c", "d"]
    partner, same = kl_partners(prompts, list(range(7)))
    assert same == 0 and sorted(partner) == list(range(7)) and sorted(partner.values()) == list(range(7))
    assert all(prompts[r] != prompts[partner[r]] for r in partner)
    assert kl_partners(["x", "y"], [0, 1])[0] == {0: 1, 1: 0}   # distinct prompts: TRL's rotation by one
    assert kl_partners(["x"], [0]) == ({}, 0)


def test_first_step_loss_equals_naive_kto(tmp_path, tiny_model_dir, files):
    # a reference that differs from the policy, so rho and z0 are not trivially 0 at the first step
    tok = load_model(str(tiny_model_dir), trust_remote_code=False)[1]
    ref_dir = tmp_path / "ref"
    small_llama(len(tok), seed=1).save_pretrained(ref_dir)
    tok.save_pretrained(ref_dir)
    recipe = _recipe(tmp_path, "first", model=tiny_model_dir, dataset=files / "unpaired.parquet",
                     loss={"name": "kto", "beta": 0.5, "lambda_D": 1.0, "lambda_U": 1.3},
                     reference={"model": str(ref_dir)}, train={"max_steps": 1})
    with pytest.warns(UserWarning, match=r"outside the recommended \[1, 4/3\]; loss.lambda_D in \[1.3, 1.73\]"):
        res = train_from_recipe(recipe)   # 1.0*24 / (1.3*24) = 0.77: TRL's balance warning
    got = _metrics(res["output_dir"])[0]

    pol, ref = load_model(str(tiny_model_dir), trust_remote_code=False)[0], load_model(str(ref_dir),
                                                                                    trust_remote_code=False)[0]
    data = build_train_data(pq.read_table(files / "unpaired.parquet"), tok, max_length=MAXLEN,
                            options=DataOptions(unpaired=True))
    idx = make_plan(data.stage, batch_size=8, grad_accum=1, epochs=1, seed=0, curriculum="off", max_steps=1)[0].micro[0]
    rho = torch.tensor([_naive_logp(pol, data.groups[i].prompt_ids, data.groups[i].response_ids[0])
                        - _naive_logp(ref, data.groups[i].prompt_ids, data.groups[i].response_ids[0]) for i in idx])
    kl = torch.tensor([_naive_logp(pol, data.kl_groups[i].prompt_ids, data.kl_groups[i].response_ids[0])
                       - _naive_logp(ref, data.kl_groups[i].prompt_ids, data.kl_groups[i].response_ids[0]) for i in idx])
    z0 = max(0.0, kl.mean().item())
    label = data.columns["label"][list(idx), 0]
    loss = torch.where(label, 1.0 * (1 - torch.sigmoid(0.5 * (rho - z0))), 1.3 * (1 - torch.sigmoid(0.5 * (z0 - rho))))
    assert got["loss"] == pytest.approx(loss.mean().item(), abs=2e-5)
    assert got["loss/kto_z0"] == pytest.approx(z0, abs=2e-4)
    assert got["loss/reward_desirable"] == pytest.approx(0.5 * rho[label].mean().item(), abs=2e-4)
    assert got["loss/reward_undesirable"] == pytest.approx(0.5 * rho[~label].mean().item(), abs=2e-4)
    assert got["reward_accuracy"] is None and got["loss/kto_desirable_frac"] == pytest.approx(label.float().mean().item())
    assert res["kto_balance"]["desirable"] == 24 and res["kl_samples_sharing_prompt"] == 0


_err = recipe_error


def test_parse_time_errors(tmp_path, files):
    base = {"model": "some/model", "reference": {"model": "some/model"}}
    un, pairs = files / "unpaired.parquet", files / "pairs.parquet"
    assert load_train_recipe(_recipe(tmp_path, "ok", dataset=un, **base)).loss["name"] == "kto"
    cases = [
        (dict(dataset=un, train={"batch_size": 1}), "train.batch_size", "batch_size must be >= 2"),
        (dict(dataset=files / "nolabel.parquet"), "dataset", "no 'label'"),
        (dict(dataset=un, loss={"name": "plackett_luce_dpo"}), "loss.name", "lists table"),
        (dict(dataset=un, loss={"name": "dpo_sigmoid"}), "loss.name", "pairs table"),
        (dict(dataset=pairs), "unpaired.from_pairs", "set unpaired.from_pairs"),
        (dict(dataset=pairs, loss={"name": "dpo_sigmoid"}, unpaired={"from_pairs": True}), "unpaired", "kto"),
        (dict(dataset=un, unpaired={"from_pairs": True}), "unpaired.from_pairs", "not pairs"),
        (dict(dataset=un, unpaired={"label_threshold": 0.5}), "unpaired.label_threshold", "'label'"),
        (dict(dataset=un, curriculum={"mode": "iterative"}), "curriculum.mode", "kto"),
        (dict(dataset=un, loss={"name": "kto", "lambda_D": 0}), "loss.lambda_D", ""),
        (dict(dataset=un, chat_template="sometimes"), "chat_template", ""),
    ]
    for over, path, words in cases:
        e = _err(_recipe(tmp_path, "bad", **{**base, **over}))
        assert e.path == path and words in str(e), (over, str(e))
    # no reference section: the reference pass runs the starting policy (TRL's convention), no error
    from training.recipe import reference_model
    r = load_train_recipe(_recipe(tmp_path, "noref", dataset=un, model="some/model"))
    assert reference_model(r, ["prompt", "completion", "label"]) == "some/model"
    assert reference_model(r, ["prompt", "completion", "label", "ref_logp", "ref_logp_kl"]) is None
    # a scored responses table (the catalog form of TRL unpaired data) parses; labels are checked at load time
    load_train_recipe(_recipe(tmp_path, "scored", dataset=files / "scored.parquet", **base))


def test_load_time_label_errors_and_threshold(tokenizer, files):
    scored = pq.read_table(files / "scored.parquet")
    with pytest.raises(SchemaError) as e:
        build_train_data(scored, tokenizer, max_length=MAXLEN, options=DataOptions(unpaired=True))
    assert e.value.column == "score" and e.value.row == 1 and "label_threshold" in str(e.value)
    d = build_train_data(scored, tokenizer, max_length=MAXLEN, options=DataOptions(unpaired=True, label_threshold=0.75))
    assert d.columns["label"][:, 0].tolist() == [True, False] * 24
    nulls = scored.set_column(2, "score", pa.array([None, 1.0, 0.0] * 16, pa.float64()))
    d = build_train_data(nulls, tokenizer, max_length=MAXLEN, options=DataOptions(unpaired=True))
    assert d.dropped == {"score is null": 16} and len(d.groups) == 32   # an accounted drop, not a silent one


def test_kto_training_raises_desirable_over_undesirable(tmp_path, tiny_model_dir, files):
    recipe = _recipe(tmp_path, "train", model=tiny_model_dir, dataset=files / "unpaired.parquet",
                     reference={"model": str(tiny_model_dir)}, train={"max_steps": 12})
    res = train_from_recipe(recipe)
    m = _metrics(res["output_dir"])
    assert len(m) == 12 and m[0]["loss"] == pytest.approx(0.5, abs=1e-6)   # policy == reference: rho = z0 = 0
    table = pq.read_table(res["reference"]["ref"])
    lm, tok = load_model(res["final_model"], trust_remote_code=False)
    opts = DataOptions(unpaired=True)
    after = compute_reference(lm, tok, table, max_length=MAXLEN, device="cpu", options=opts)["ref_logp"].to_pylist()
    before = table.column("ref_logp").to_pylist()
    label = table.column("label").to_pylist()
    reward = [0.1 * (a - b) for a, b in zip(after, before, strict=True)]
    des = sum(r for r, lab in zip(reward, label, strict=True) if lab) / sum(label)
    und = sum(r for r, lab in zip(reward, label, strict=True) if not lab) / (len(label) - sum(label))
    assert des - und > 0.5, (des, und)


def test_kto_resume_is_exact(tmp_path, tiny_model_dir, files):
    common = {"model": tiny_model_dir, "dataset": files / "pairs.parquet", "reference": {"model": str(tiny_model_dir)},
              "unpaired": {"from_pairs": True}, "train": {"max_steps": 4, "save_every": 2, "batch_size": 4, "optimizer_state": "all"}}
    r = train_from_recipe(_recipe(tmp_path, "full", **common))
    want = [x["loss"] for x in _metrics(r["output_dir"])]
    assert len(want) == 4 and r["kto_balance"]["within"] and r["rows_trained"] == 24
    # stop after step 2: drop what came later (the state a run killed after the step-2 checkpoint leaves)
    out = Path(r["output_dir"])
    shutil.rmtree(out / "checkpoints" / "step-000004")
    shutil.rmtree(out / "final")
    again = train_from_recipe(_recipe(tmp_path, "full", **common), resume=True)
    assert again["resumed_from"] == 2
    assert [x["loss"] for x in _metrics(out)] == want   # bit-exact on CPU


def test_example_recipe_through_the_cli(tmp_path, tiny_model_dir):
    from catalog import Catalog
    from prefdata.build import run_recipe

    cat = tmp_path / "cat"
    run_recipe(ROOT / "examples" / "recipes" / "arena_best_vs_worst.yaml", Catalog.open(cat), progress=False)
    # the test budget: a 12-pair version of the built dataset (the recipe reads the latest version)
    c = Catalog.open(cat)
    c.write("arena-best-vs-worst", c.read("arena-best-vs-worst").slice(0, 12), message="test subset")
    r = yaml.safe_load((ROOT / "examples" / "recipes" / "train_kto.yaml").read_text())
    # the bundled recipe as is, except a smaller model and fewer steps (the test budget)
    r.update(model=str(tiny_model_dir), make_tiny_model=False, reference={"model": str(tiny_model_dir)},
             output_dir=str(tmp_path / "run"))
    r["train"].update(max_steps=2, batch_size=4, max_length=128, save_every=0)
    p = tmp_path / "train_kto.yaml"
    p.write_text(yaml.safe_dump(r))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "prefdata.cli", "train", str(p), "--catalog", str(cat), "--json"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = _metrics(tmp_path / "run")
    assert [x["step"] for x in m] == [1, 2] and "loss/kto_z0" in m[0]
    versions = Catalog.open(cat).versions("arena-best-vs-worst")
    assert len(versions) == 3   # the reference pass wrote a new version with the KL samples' columns
    cols = Catalog.open(cat).read("arena-best-vs-worst").column_names
    assert {"ref_logp_chosen", "ref_logp_rejected", "ref_logp_kl_chosen", "ref_logp_kl_rejected"} <= set(cols)
