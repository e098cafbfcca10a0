"""`prefdata eval` end to end: a tiny random Llama trained two steps by `prefdata train` on a split pairs set, then
evaluated against its starting model on the held-out prompts (rules scorer, KL) by a real `prefdata eval`
subprocess. The table, summary, lineage and the `eval` event are checked against values worked out here (the KL by
a forward of both models written out with plain transformers). Bad input: one line on stderr, exit code 2, nothing
written. Runs other than the main one go through the same CLI in-process (typer's runner), which saves a torch +
transformers import per run."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "training" / "hh_pairs.parquet"
SHAPE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2}
N_TRAIN, N_TEST = 8, 6


def cli(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "prefdata", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"prefdata {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def cli_inproc(*args: str):
    """The same command through typer's runner in this process (cwd: the caller's monkeypatched one)."""
    from typer.testing import CliRunner

    from prefdata.cli import app
    return CliRunner().invoke(app, list(args))


def user_error(returncode: int, stderr: str) -> str:
    """The one-line message of a user error: exit 2, one `error:` line (the last), no traceback."""
    assert returncode == 2, (returncode, stderr[-2000:])
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in stderr, stderr
    return errors[0]


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A catalog with a split pairs set, a tiny model, and a 2-step DPO run on its train rows (`prefdata train`)."""
    from catalog import Catalog
    from training.tiny import make_tiny_model, texts_of_table

    root = tmp_path_factory.mktemp("evalcmd")
    pairs = pq.read_table(DATA)
    lens = [len(p) for p in pairs.column("prompt").to_pylist()]
    table = pairs.take(sorted(range(len(lens)), key=lens.__getitem__)[:N_TRAIN + N_TEST])
    table = table.append_column("split", pa.array(["train"] * N_TRAIN + ["test"] * N_TEST))
    cat = Catalog.open(root / "cat")
    cat.write("tiny-pairs", table, message="test pairs", lineage={"builder": "test"})
    make_tiny_model(root / "base", texts_of_table(pairs), vocab_size=400, seed=0, **SHAPE)
    recipe = write_yaml(root / "train.yaml", {
        "model": "base", "dataset": "tiny-pairs", "loss": {"name": "dpo_sigmoid", "beta": 0.1},
        "reference": {"model": "base"}, "output_dir": "run",
        "train": {"batch_size": 4, "max_length": 96, "lr": 0.5, "max_steps": 2, "warmup_ratio": 0.0, "seed": 0}})
    cwd = Path.cwd()
    os.chdir(root)            # the recipe's paths are relative to the working directory, as for a user
    try:
        res = cli_inproc("train", str(recipe), "--catalog", "cat")
    finally:
        os.chdir(cwd)
    assert res.exit_code == 0, res.output
    return root


def eval_recipe(root: Path, name: str, **over) -> Path:
    base = {"name": name, "model": "run/final",
            "prompts": {"dataset": "tiny-pairs", "split": "test"},
            # on the CPU everywhere: the sampled texts (and so the expected winners) do not depend on the machine
            "generate": {"sampling": {"temperature": 1.0, "max_new_tokens": 10}, "seed": 3, "batch_size": 4,
                         "device": "cpu", "dtype": "float32"},
            "scorers": [{"kind": "rules", "name": "short", "rule": "length", "unit": "chars", "max": 18},
                        {"kind": "rules", "name": "has_the", "rule": "regex", "pattern": "(?i)\\bthe\\b"}],
            "winner_by": "short", "kl": True, "bootstrap": {"n": 500, "seed": 1}}
    return write_yaml(root / f"{name}.yaml", {**base, **over})


def direct_logp(lm, tok, prompt: str, response: str) -> float:
    """log p(response + eos | prompt) summed over the response tokens, with transformers only: the prompt's ids
    are the common prefix of tok(prompt) and tok(prompt + response + eos), as training tokenizes."""
    p_ids = tok(prompt)["input_ids"]
    full = tok(prompt + response + tok.eos_token)["input_ids"]
    k = 0
    while k < min(len(p_ids), len(full)) and p_ids[k] == full[k]:
        k += 1
    with torch.no_grad():
        logits = lm(torch.tensor([full])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    return float(sum(logp[t - 1, full[t]] for t in range(k, len(full))))


def test_eval_end_to_end(trained):
    from catalog import Catalog
    from prefdata.eval_metrics import win_values
    from training.checkpointing import checkpoint_dirs

    root = trained
    proc = cli("eval", str(eval_recipe(root, "eval-tiny")), "--catalog", "cat", "--json", cwd=root)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["dataset"] == "eval-tiny@1" and out["warnings"] == []
    cat = Catalog.open(root / "cat")
    t = cat.read("eval-tiny")

    # the eval contract: names and types, one row per held-out prompt
    want = {"prompt_id": pa.string(), "prompt": pa.string(), "response": pa.string(),
            "baseline_response": pa.string(), "winner": pa.string(), "score_short": pa.float64(),
            "baseline_score_short": pa.float64(), "score_has_the": pa.float64(),
            "baseline_score_has_the": pa.float64(), "length": pa.int64(), "baseline_length": pa.int64(),
            "logratio": pa.float64()}
    assert {n: t.schema.field(n).type for n in want} == want
    prompts_ref = f"tiny-pairs@{cat.resolve('tiny-pairs')}"    # the latest: the reference pass's version
    pairs = cat.read("tiny-pairs")
    test_rows = pairs.filter(pa.compute.equal(pairs["split"], "test"))
    assert t.num_rows == N_TEST and t["prompt_id"].to_pylist() == test_rows["prompt_id"].to_pylist()

    # winner from the `short` rule (1 if <= 18 chars), ties within tie_eps 0
    rows = t.to_pylist()
    for r in rows:
        assert r["score_short"] == float(len(r["response"]) <= 18)
        assert r["baseline_score_short"] == float(len(r["baseline_response"]) <= 18)
        d = r["score_short"] - r["baseline_score_short"]
        assert r["winner"] == ("tie" if d == 0 else "model" if d > 0 else "baseline")
    s = out["summary"]
    wins = win_values(t["winner"].to_pylist())
    assert s["n"] == N_TEST and s["winner_by"] == "short"
    assert math.isclose(s["win_rate"], float(wins.mean()), abs_tol=1e-12)
    assert s["wins"] + s["ties"] + s["losses"] == N_TEST and s["wins"] + s["losses"] > 0   # not all ties
    assert s["scorers"]["short"]["model_mean"] == pytest.approx(np.mean([r["score_short"] for r in rows]))
    assert s["length"]["model"]["mean"] == pytest.approx(np.mean([r["length"] for r in rows]))

    # KL: logratio of row 0 by hand (the trained final/ vs the starting model), and the summary's mean over rows
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(root / "base")
    pol = AutoModelForCausalLM.from_pretrained(root / "run" / "final", dtype=torch.float32).eval()
    ref = AutoModelForCausalLM.from_pretrained(root / "base", dtype=torch.float32).eval()
    r0 = rows[0]
    hand = direct_logp(pol, tok, r0["prompt"], r0["response"]) - direct_logp(ref, tok, r0["prompt"], r0["response"])
    assert abs(hand) > 1e-3 and r0["logratio"] == pytest.approx(hand, abs=1e-4)
    lr = np.array([r["logratio"] for r in rows])
    assert s["kl"]["n"] == N_TEST and s["kl"]["mean"] == pytest.approx(lr.mean(), abs=1e-12)
    assert s["kl"]["se"] == pytest.approx(lr.std(ddof=1) / math.sqrt(N_TEST), abs=1e-12)

    # lineage names the checkpoint's run, step, training data and config hash, the baseline and the prompts
    lin = cat.lineage("eval-tiny")
    state = json.loads((checkpoint_dirs(root / "run")[-1] / "trainer_state.json").read_text())
    ck = lin["eval"]["checkpoint"]
    assert lin["kind"] == "eval" and lin["builder"] == "eval"
    assert ck["run_dir"] == str(root / "run") and ck["step"] == 2 and ck["kind"] == "run" and ck["base_model"] == "base"
    assert ck["dataset"] == state["dataset"] and ck["config_sha256"] == state["config_sha256"]
    assert lin["eval"]["baseline"]["path"] == "base" and lin["eval"]["prompts"] == prompts_ref
    assert lin["inputs"] == [prompts_ref] and lin["rows_in"] == lin["rows_kept"] == N_TEST
    assert lin["eval"]["summary"]["win_rate"] == s["win_rate"]
    assert not (root / "cat" / "_work" / "eval" / "eval-tiny").exists()   # work dir cleared once written

    # `prefdata log` of the training dataset lists the evaluation of its checkpoint
    log = " ".join(cli("log", "tiny-pairs", "--catalog", "cat", cwd=root).stdout.split())   # rich wraps lines
    assert "eval" in log and "eval-tiny@1" in log and f"win rate {s['win_rate']:.3f}" in log


def test_eval_overlap_warns_and_partial_scorer_drops(trained, monkeypatch):
    """Prompts from the training split: a warning with the count (not an error). A code_tests scorer with tests
    on some prompts only: the others are dropped and counted by reason. The model is a step checkpoint."""
    from catalog import Catalog
    root = trained
    monkeypatch.chdir(root)
    cat = Catalog.open(root / "cat")
    train_rows = cat.read("tiny-pairs", 1).slice(0, 3)
    tests = pa.array([None, ["assert True"], None], pa.list_(pa.string()))
    cat.write("tiny-prompts", train_rows.append_column("tests", tests), message="prompts with tests")
    # a trainer checkpoint (accelerate state, no config.json): merged into a plain folder for generation
    rec = eval_recipe(root, "eval-overlap", model="run/checkpoints/step-000002", prompts={"dataset": "tiny-prompts"},
                      kl=False,
                      scorers=[{"kind": "code_tests", "name": "tests"}], winner_by="tests",
                      generate={"sampling": {"temperature": 0.0, "max_new_tokens": 4}})
    res = cli_inproc("eval", str(rec), "--catalog", "cat", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["warnings"] == [f"3 of 3 eval prompts are in the model's training data ({out['checkpoint']['dataset']}, "
                               "train rows): those win rates are not held-out"]
    assert "warning: 3 of 3 eval prompts" in " ".join(res.stderr.split())
    assert out["checkpoint"]["kind"] == "run" and out["checkpoint"]["step"] == 2 and out["baseline"]["path"] == "base"
    assert out["rows"] == 1 and out["rows_dropped"] == {"code_tests tests: row has no tests (model response)": 2}
    lin = Catalog.open(root / "cat").lineage("eval-overlap")
    assert lin["rows_in"] == 3 and lin["rows_kept"] == 1 and lin["eval"]["overlap"]["prompts_in_training"] == 3


def _versions(root: Path) -> dict:
    from catalog import Catalog
    cat = Catalog.open(root / "cat")
    return {n: len(cat.versions(n)) for n in cat.names()}


def test_bad_input_one_line_exit_2_nothing_written(trained, monkeypatch):
    from peft import LoraConfig, get_peft_model

    from training.tiny import make_tiny_model, tiny_llama
    root = trained
    monkeypatch.chdir(root)
    # a LoRA adapter whose base model is gone
    adapter = root / "orphan-adapter"
    lm = get_peft_model(tiny_llama(64, **SHAPE), LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    lm.save_pretrained(adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": "gone/base-model"}))
    # a baseline with another tokenizer
    make_tiny_model(root / "other", ["completely different words here"] * 20, vocab_size=300, seed=1, **SHAPE)

    cases = {
        "missing-ckpt": ({"model": "run/checkpoints/step-000099"},
                         "missing-ckpt.yaml: model: model path 'run/checkpoints/step-000099' does not exist"),
        "orphan": ({"model": "orphan-adapter", "baseline": "base"},
                   f"its base model 'gone/base-model' is missing (looked at {root / 'gone' / 'base-model'} and in "
                   "the local hub cache)"),
        "tokenizer": ({"baseline": "other"}, "kl: the baseline 'other' has another tokenizer than the model "
                      "'run/final'"),
        "pref-columns": ({"preference": {"dataset": "eval-tiny-prompts-only"}},
                         "preference.dataset: eval-tiny-prompts-only@1 lacks the columns loss 'dpo_sigmoid' needs"),
        "no-baseline": ({"model": "base"}, "baseline: base is not a training run's checkpoint"),
        "judge-fails": ({"kl": False, "scorers": [{"kind": "judge", "name": "j", "model": {"name": "judge",
                                                   "path": "base"}, "sampling": {"max_new_tokens": 3}}],
                         "winner_by": None, "prompts": {"dataset": "tiny-pairs", "split": "test", "limit": 2}},
                        "scorer 'j' could not score any row (judge j: unparsable judgment)"),
    }
    from catalog import Catalog
    Catalog.open(root / "cat").write("eval-tiny-prompts-only", pa.table({"prompt": ["a", "b"]}), message="prompts")
    before = _versions(root)
    # one as a real process (exit status and stderr of `prefdata` itself), the others through the same CLI in-process
    proc = cli("eval", str(eval_recipe(root, "missing-ckpt", **cases["missing-ckpt"][0])), "--catalog", "cat",
               cwd=root, check=False)
    assert cases["missing-ckpt"][1] in user_error(proc.returncode, proc.stderr)
    for name, (over, needle) in cases.items():
        if name != "missing-ckpt":
            res = cli_inproc("eval", str(eval_recipe(root, name, **over)), "--catalog", "cat")
            msg = user_error(res.exit_code, res.stderr)
            assert needle in " ".join(msg.split()), (name, msg)
    assert _versions(root) == before                       # nothing written, not even a partial eval
