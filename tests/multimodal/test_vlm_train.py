"""Recipe-driven VLM multi-image DPO (training/vlm_train.py) on real MIA-DPO pairs built from the bundled images,
with a tiny random LLaVA saved to disk and loaded back: loss falls, exact resume (frozen copy, LoRA adapters,
precomputed reference), SIGKILL + `prefdata train --resume` through the CLI, catalog events, recipe errors."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pyarrow.parquet as pq
import pytest
import yaml

from builders.base import StepContext
from builders.images import MiaDpoConfig, build_mia_dpo
from prefdata.errors import PrefdataError, RecipeError
from training.data import open_dataset
from training.run import train_from_recipe
from training.vlm_recipe import load_vlm_recipe
from training.vlm_tiny import make_tiny_vlm, texts_of_rows
from training.vlm_train import load_vlm, load_vlm_data, media_paths

ROOT = Path(__file__).resolve().parents[2]
TEXT_LOOP_FIELDS = {"step", "stage", "loss", "reward_accuracy", "chosen_reward", "rejected_reward", "margin",
                    "grad_norm", "lr", "examples", "tokens", "tokens_per_s", "examples_per_s", "step_time_s",
                    "peak_memory_mb", "logps_chosen", "logps_rejected"}


@pytest.fixture(scope="module")
def mia(tmp_path_factory, data_dir):
    """6 MIA-DPO pairs (sequence + grid, 32 px cells) whose media live in a real catalog directory, written both
    as a parquet file next to the media and as catalog dataset `mia@1`; plus a tiny LLaVA built for them."""
    from PIL import Image

    from catalog import Catalog

    root = tmp_path_factory.mktemp("vlm")
    captions = pl.read_ndjson(data_dir / "images" / "captions.jsonl")
    (root / "src" / "images").mkdir(parents=True)
    for f in captions["file"]:   # the real images at 48 px: decoding them is most of a tiny model's step
        with Image.open(data_dir / f) as im:
            im.convert("RGB").resize((48, 48)).save(root / "src" / Path(f).with_suffix(".png"))
    ctx = StepContext(base_dir=root / "src", catalog=SimpleNamespace(root=root / "catalog"), seed=7, progress=False)
    df = captions.select(image=pl.col("file").str.replace(r"\.\w+$", ".png"), response=pl.col("caption_short"))
    cfg = MiaDpoConfig(question_column=None, modes=["sequence", "grid"], cell_size=(32, 32), sequence_images=(2, 3))
    table = build_mia_dpo(df.lazy(), cfg, ctx).frame.collect().head(6).to_arrow()
    pq.write_table(table, root / "catalog" / "pairs.parquet")
    Catalog.open(root / "catalog").write("mia", table, message="test MIA-DPO pairs", lineage={"builder": "test"})
    model = make_tiny_vlm(root / "tiny-llava", texts_of_rows(table.to_pylist()))
    return SimpleNamespace(root=root, parquet=root / "catalog" / "pairs.parquet", catalog=root / "catalog",
                           model=model, table=table)


def recipe(tmp: Path, mia, name: str = "r.yaml", **over) -> Path:
    r = {"vlm": {"model": str(mia.model), **over.pop("vlm", {})}, "dataset": str(over.pop("dataset", mia.parquet)),
         "loss": over.pop("loss", {"name": "dpo_sigmoid", "beta": 0.5}),
         "output_dir": str(over.pop("output_dir", tmp / "run")),
         "train": {"batch_size": 2, "lr": 3e-3, "max_steps": 4, "warmup_ratio": 0.0, "seed": 0, "max_length": 256,
                   **over.pop("train", {})}}
    r.update(over)
    p = tmp / name
    p.write_text(yaml.safe_dump(r))
    return p


def metrics(out_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_on_a_fixed_batch(tmp_path, mia):
    two = tmp_path / "two.parquet"   # two pairs, batch_size 2: every step sees the same batch
    pq.write_table(mia.table.slice(0, 2), two)
    res = train_from_recipe(recipe(tmp_path, mia, dataset=two, vlm={"media_root": str(mia.catalog)},
                                   train={"max_steps": 6}))
    m = metrics(Path(res["output_dir"]))
    assert [x["step"] for x in m] == [1, 2, 3, 4, 5, 6] and TEXT_LOOP_FIELDS <= set(m[0])
    assert abs(m[0]["loss"] - math.log(2)) < 1e-6          # the frozen copy equals the policy at step 1
    assert m[-1]["loss"] < m[0]["loss"] - 0.2 and m[-1]["reward_accuracy"] == 1.0
    assert res["reference"] == {"source": "copy"} and res["rows_trained"] == 2
    assert (Path(res["final_model"]) / "model.safetensors").exists()
    assert (Path(res["final_model"]) / "processor_config.json").exists()


def _over(source: str) -> dict:
    over = {"reference": {"source": source}, "train": {"save_every": 2, "optimizer_state": "all"}}
    if source == "adapters":
        over["lora"] = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
        over["train"]["lr"] = 3e-2
    return over


@pytest.fixture(scope="module")
def copy_run(tmp_path_factory, mia):
    """The uninterrupted 4-step run with a frozen-copy reference (compared against by several tests)."""
    import torch

    tmp = tmp_path_factory.mktemp("copy_run")
    n = torch.get_num_threads()
    torch.set_num_threads(1)   # as every test (conftest) and subprocess here: float sums depend on the split
    try:
        return tmp, train_from_recipe(recipe(tmp, mia, **_over("copy")))
    finally:
        torch.set_num_threads(n)


@pytest.mark.parametrize("source", ["copy", "adapters", "precompute"])
def test_resume_from_a_checkpoint_reproduces_the_losses(tmp_path, mia, copy_run, source):
    over = _over(source)
    if source == "copy":
        shutil.copytree(copy_run[0] / "run", tmp_path / "run")
        res = copy_run[1]
    else:
        res = train_from_recipe(recipe(tmp_path, mia, **over))
    want = metrics(tmp_path / "run")
    assert [x["step"] for x in want] == [1, 2, 3, 4] and abs(want[0]["loss"] - math.log(2)) < 1e-6
    assert want[-1]["loss"] < want[0]["loss"]               # it trains (adapters included)
    # stop after step 2: keep only that checkpoint, and the metrics lines a killed run might have left
    shutil.copytree(tmp_path / "run", tmp_path / "stopped")
    shutil.rmtree(tmp_path / "stopped" / "checkpoints" / "step-000004")
    shutil.rmtree(tmp_path / "stopped" / "final")
    lines = (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "stopped" / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n")
    r2 = recipe(tmp_path, mia, "r2.yaml", output_dir=tmp_path / "stopped", **over)
    res2 = train_from_recipe(r2, resume=True)
    got = metrics(tmp_path / "stopped")
    assert res2["resumed_from"] == 2 and [x["step"] for x in got] == [1, 2, 3, 4]
    assert [x["loss"] for x in got] == [x["loss"] for x in want]   # bit-exact on CPU
    state = json.loads((tmp_path / "stopped" / "checkpoints" / "step-000004" / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["dataset"] == str(mia.parquet)
    assert state["config_sha256"] == load_vlm_recipe(r2).config_hash() == res2["config_sha256"]
    assert state["config_sha256"] != res["config_sha256"]    # the recipe differs: its output_dir
    assert state["recipe"]["reference"]["source"] == source and state["recipe"]["loss"]["name"] == "dpo_sigmoid"
    assert state["reference"] == {"source": source} and state["metrics"]["step"] == 4
    if source == "copy":   # a different recipe cannot resume it, and a plain rerun does not overwrite it
        with pytest.raises(PrefdataError, match=r"recipe's loss differ"):
            train_from_recipe(recipe(tmp_path, mia, "r3.yaml", output_dir=tmp_path / "stopped", **over,
                                     loss={"name": "dpo_sigmoid", "beta": 0.3}), resume=True)
        with pytest.raises(PrefdataError, match="holds checkpoints of an earlier run"):
            train_from_recipe(r2)


def test_precomputed_reference_matches_the_frozen_copy(tmp_path, mia):
    runs = {}
    for src in ("copy", "precompute"):
        runs[src] = metrics(Path(train_from_recipe(recipe(tmp_path, mia, f"{src}.yaml", output_dir=tmp_path / src,
                                                          reference={"source": src}, train={"max_steps": 3}))
                                 ["output_dir"]))
    for a, b in zip(runs["copy"], runs["precompute"], strict=True):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-5, abs_tol=1e-6)
        assert math.isclose(a["chosen_reward"], b["chosen_reward"], rel_tol=1e-4, abs_tol=1e-5)


@pytest.mark.parametrize("loss", [{"name": "ld_dpo", "beta": 0.5, "alpha": 0.5}, {"name": "rpo", "beta": 0.5},
                                  {"name": "simpo", "beta": 2.0, "gamma": 0.5}])
def test_token_level_nll_and_reference_free_losses(tmp_path, mia, loss):
    res = train_from_recipe(recipe(tmp_path, mia, loss=loss, train={"max_steps": 2, "batch_size": 1}))
    m = metrics(Path(res["output_dir"]))
    assert len(m) == 2 and all(math.isfinite(x["loss"]) for x in m)
    if loss["name"] == "ld_dpo":   # per-token log-ratios are all 0 at step 1: -log s(0)
        assert abs(m[0]["loss"] - math.log(2)) < 1e-6
    if loss["name"] == "simpo":
        assert res["reference"] == {"source": "none"}


def _cli_process(*args: str, catalog: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFDATA_CATALOG": str(catalog), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "prefdata", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_sigkill_then_cli_resume_and_catalog_log(tmp_path, mia, copy_run):
    """`prefdata train` on catalog dataset mia (the same rows as the parquet file): killed after its step-2
    checkpoint, resumed with --resume; the losses equal the uninterrupted run and `prefdata log mia` links the
    dataset version to the run's checkpoints."""
    from typer.testing import CliRunner

    from prefdata.cli import app

    want = metrics(Path(copy_run[1]["output_dir"]))
    killed = recipe(tmp_path, mia, "killed.yaml", output_dir=tmp_path / "killed", dataset="mia",
                    train={"save_every": 1})
    proc = _cli_process("train", str(killed), catalog=mia.catalog)
    ck = tmp_path / "killed" / "checkpoints" / "step-000002"
    deadline = time.time() + 120
    while not ck.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert ck.exists(), proc.stderr.read()[-2000:] if proc.poll() is not None else "timeout"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "checkpoints" / "step-000004").exists()   # it really was interrupted
    # the resume runs in this process through the same CLI entry (one subprocess start saved)
    res = CliRunner().invoke(app, ["train", str(killed), "--resume", "--json", "--catalog", str(mia.catalog)])
    assert res.exit_code == 0, res.output[-2000:]
    assert json.loads(res.stdout)["resumed_from"] >= 2
    assert [x["loss"] for x in metrics(tmp_path / "killed")] == [x["loss"] for x in want]

    log = CliRunner().invoke(app, ["log", "mia", "--json", "--catalog", str(mia.catalog)])
    assert log.exit_code == 0, log.output
    events = [e for e in json.loads(log.stdout) if e.get("kind") in ("train", "checkpoint")]
    text = json.dumps(events)
    assert str(tmp_path / "killed" / "checkpoints" / "step-000004") in text
    assert any(e["kind"] == "train" and "mia@1" in json.dumps(e) for e in events), events

    # a new version of mia: "mia" now means mia@2, and resuming the run trained on mia@1 is a one-line error
    from catalog import Catalog
    Catalog.open(mia.catalog).write("mia", mia.table.slice(0, 3), message="fewer rows", lineage={"builder": "test"})
    res = CliRunner().invoke(app, ["train", str(killed), "--resume", "--catalog", str(mia.catalog)])
    assert res.exit_code == 2 and "trained on mia@1" in res.output and "pin the version" in res.output, res.output


def test_unreadable_and_mismatched_rows_are_counted_drops(tmp_path, mia):
    rows = mia.table.slice(0, 3).to_pylist()
    rows[0]["images"] = ["media/" + "0" * 64 + ".png"] * len(rows[0]["images"])   # missing files
    rows[1]["prompt"] = rows[1]["prompt"].replace("<image>", "", 1)                 # one placeholder short
    bad = tmp_path / "bad.parquet"
    pq.write_table(type(mia.table).from_pylist(rows, schema=mia.table.schema), bad)
    r = load_vlm_recipe(recipe(tmp_path, mia, dataset=bad, vlm={"media_root": str(mia.catalog)}))
    ds = open_dataset(r.dataset)
    _, proc = load_vlm(r.vlm.model)
    data = load_vlm_data(ds, r, proc, media_paths(r, ds))
    assert data.rows_in == 3 and len(data.rows) == 1
    assert dict(data.dropped) == {"unreadable image": 1, "<image> count != number of images": 1}
    assert data.unreadable[0]["row"] == 0 and data.unreadable[0]["file"].endswith("0" * 64 + ".png")


@pytest.mark.parametrize("over, where, words", [
    ({"loss": {"name": "dpo_sigmod"}}, "loss.name", "unknown loss"),
    ({"loss": {"name": "plackett_luce_dpo"}}, "loss.name", "pair losses"),
    ({"loss": {"name": "tdpo1", "beta": 0.1}}, "loss.name", "sequential KL"),
    ({"loss": {"name": "modpo"}}, "loss.name", "other objectives"),
    ({"loss": {"name": "dpo_sigmoid", "beta": -1}}, "loss.beta", "must be >"),
    ({"reference": {"source": "adapters"}}, "reference.source", "lora"),
    ({"reference": {"source": "dataset"}}, "reference.source", "ref_logp_chosen"),
    ({"loss": {"name": "ld_dpo"}, "reference": {"source": "precompute"}}, "reference.source", "per-token"),
    ({"train": {"token_budget": 512}}, "train", "token_budget"),
    ({"train": {"master_weights": "bf16"}}, "train", "text-trainer option"),
    ({"vlm": {"model_path": "x"}}, "vlm.model_path", "unknown key"),
    ({"curriculum": {"mode": "iterative"}}, "curriculum.mode", "iterative"),
    ({"dataset": "NO_IMAGES"}, "dataset", "images"),
])
def test_recipe_errors_are_one_line_and_name_the_path(tmp_path, mia, over, where, words):
    if over.get("dataset") == "NO_IMAGES":
        p = tmp_path / "text.parquet"
        pq.write_table(mia.table.drop(["images"]), p)
        over = {**over, "dataset": p}
    with pytest.raises(RecipeError) as e:
        train_from_recipe(recipe(tmp_path, mia, **over))
    msg = str(e.value)
    assert "\n" not in msg and f"{where}:" in msg and words in msg, msg
    assert not (tmp_path / "run").exists()   # nothing ran


def test_qwen2_vl_style_model_trains_through_the_same_recipe(tmp_path, mia):
    """The other processor layout: flattened patches + image_grid_thw + per-token mm_token_type_ids, M-RoPE,
    and a different image placeholder (vlm.image_text)."""
    from training.vlm import collate_pairs
    from training.vlm_tiny import QWEN_IMAGE_TEXT

    model_dir = make_tiny_vlm(tmp_path / "tiny-qwen", texts_of_rows(mia.table.to_pylist()), family="qwen2_vl")
    two = tmp_path / "two.parquet"   # a fixed batch: the loss must fall
    pq.write_table(mia.table.slice(0, 2), two)
    r = recipe(tmp_path, mia, dataset=two, loss={"name": "ipo", "tau": 0.5}, train={"max_steps": 3},
               vlm={"model": str(model_dir), "image_text": QWEN_IMAGE_TEXT, "media_root": str(mia.catalog)})
    rec = load_vlm_recipe(r)
    ds = open_dataset(rec.dataset)
    _, proc = load_vlm(str(model_dir))
    b = collate_pairs(proc, ds.table.to_pylist(), media_paths(rec, ds), image_text=QWEN_IMAGE_TEXT)
    pad_id = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    # every image's merged patches (t*h*w / 2x2) became image tokens, for chosen and rejected alike
    assert int((b.input_ids == pad_id).sum()) == int(b.extra["image_grid_thw"].prod(-1).sum()) // 4
    assert b.extra["mm_token_type_ids"].shape == b.input_ids.shape
    res = train_from_recipe(r)
    m = metrics(Path(res["output_dir"]))
    assert [x["step"] for x in m] == [1, 2, 3] and abs(m[0]["loss"] - 1.0) < 1e-6   # IPO: (0 - 1/(2 tau))^2
    assert m[-1]["loss"] < m[0]["loss"]
