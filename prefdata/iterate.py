"""`prefdata iterate RECIPE [--resume]`: rounds of generate -> build -> train -> evaluate from the current policy.

Round k (0-based) runs these phases, each leaving its result in the catalog or on disk before the next starts:

  generate  the current policy s_k samples the round's prompts          -> <name>-generations@v
  build     the recipe's builder steps turn the samples into pairs     -> <name>-data@v
  train     `prefdata train` semantics on that version, from s_k       -> <output_dir>/round-k/train (checkpoints,
            (reference: s_k | the start policy | none)                    final/, metrics.jsonl; checkpoint events)
  policy    x_k = the trained weights (a LoRA adapter merged into s_k); the next round's policy
            s_{k+1} = x_k + momentum (x_k - x_{k-1})  (APO, training/apo.py; x_{-1} = s_0)
  eval      `prefdata eval` of s_{k+1} against the start policy and against s_k -> <name>-eval@v (one each)
  record    per-round metrics -> <output_dir>/rounds.json and <name>-rounds@v (lineage: the round's versions,
            its parent and its checkpoint); a "round" event on the data version it trained on

Every catalog version a round writes carries `iterate: {run, round, phase, recipe_sha256}` in its lineage, the
round's resolved config (hashed: `config_sha256`) and, as `parent`, the checkpoint that generated its data
(round k: round k-1's checkpoint s_k; round 0: the start policy), which is also listed in `inputs`.

Resume: a small state file (<output_dir>/iterate_state.json, written atomically) records each finished phase.
`--resume` skips finished phases and redoes the interrupted one: generation resumes from its committed
shards, training from its last checkpoint (train --resume), and a catalog version that was written just before
a kill is found again by its `iterate` lineage key instead of being written twice. Seeds are fixed per row and
per round, so a resumed run gives the rows and metrics of an uninterrupted one.

Test hook: PREFDATA_TEST_PAUSE_AT=<phase>@<round> makes the runner stop itself (SIGSTOP) at a fixed point inside
that phase — generate: after its first shard is committed; build: after the data version is written and before
the state records it; train: once the first checkpoint exists; eval: after the first eval version is written —
after writing <output_dir>/.paused, so a test can SIGKILL it there and check `--resume`. Unset in normal use."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from prefdata.errors import PrefdataError
from prefdata.iterate_recipe import IterateRecipe, eval_recipe_data, load_iterate_recipe
from prefdata.prompt_pool import check_disjoint, holdout, load_pool, round_prompts

STATE_FILE = "iterate_state.json"
ROUNDS_FILE = "rounds.json"
PAUSE_ENV = "PREFDATA_TEST_PAUSE_AT"
PHASES = ("generate", "build", "train", "policy", "eval", "record")
VERIFIER_KINDS = ("rules", "code_tests")


class NoTrainingData(PrefdataError):
    """A round's steps produced no training rows: the loop stops (the CLI prints one line, exit 2)."""


# ------------------------------------------------------------------------------------------------ small helpers
def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def _pause(out_dir: Path, point: str) -> None:
    """The test hook (module doc): stop this process at `point` when PREFDATA_TEST_PAUSE_AT names it."""
    if os.environ.get(PAUSE_ENV) == point:
        (out_dir / ".paused").write_text(point)
        os.kill(os.getpid(), signal.SIGSTOP)


@contextmanager
def _pause_when(out_dir: Path, point: str, root: Path, pattern: str):
    """The test hook for phases whose inner steps are not ours (generation shards, trainer checkpoints): a
    watcher thread stops the process as soon as a file matching `root/pattern` exists."""
    if os.environ.get(PAUSE_ENV) != point:
        yield
        return
    done = threading.Event()

    def watch():
        while not done.is_set():
            if next(root.glob(pattern), None) is not None:
                _pause(out_dir, point)
                return
            time.sleep(0.005)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()


@dataclass
class Ctx:
    recipe: IterateRecipe
    cat: Any
    state: dict
    out: Path
    train_pool: pl.DataFrame
    eval_pool: pl.DataFrame | None
    pool_input: str
    console: Any
    progress: bool

    @property
    def run_id(self) -> str:
        return hashlib.sha256(str(self.out).encode()).hexdigest()[:16]

    def ds(self, kind: str) -> str:
        return f"{self.recipe.name}-{kind}"

    def key(self, k: int, phase: str, **extra) -> dict:
        return {"run": self.run_id, "round": k, "phase": phase, "recipe_sha256": self.recipe.config_sha256(), **extra}

    def round_dir(self, k: int) -> Path:
        return self.out / f"round-{k:03d}"

    def rnd(self, k: int) -> dict:
        rounds = self.state["rounds"]
        while len(rounds) <= k:
            rounds.append({"round": len(rounds), "phases": {}, "seconds": {}})
        return rounds[k]

    def save(self) -> None:
        _atomic_json(self.out / STATE_FILE, self.state)

    def say(self, msg: str) -> None:
        self.console.print(msg, highlight=False, soft_wrap=True)


def find_version(cat, dataset: str, key: dict) -> int | None:
    """The version of `dataset` whose lineage carries this iterate key (a phase written before a kill)."""
    if not cat.exists(dataset):
        return None
    for v in reversed(cat.versions(dataset)):
        if cat.lineage(dataset, v["version"]).get("iterate") == key:
            return int(v["version"])
    return None


def _lineage(ctx: Ctx, k: int, phase: str, *, config: dict, inputs: list[str], parent: dict, rows_in: int,
             rows_kept: int, drops: dict[str, int], **extra) -> dict:
    return {"builder": f"iterate.{phase}", "recipe": ctx.recipe.file, "config": config, "inputs": inputs,
            "rows_in": rows_in, "rows_kept": rows_kept, "rows_dropped": drops, "drops": drops,
            "iterate": ctx.key(k, phase), "parent": parent, **extra}


def _parent(ctx: Ctx, k: int) -> dict:
    """The checkpoint whose samples round k trains on: round k-1's (its s_k), or the start policy."""
    policy = ctx.rnd(k)["policy"]
    return {"round": k - 1 if k > 0 else None, "checkpoint": policy,
            "what": "checkpoint of round k-1 (its next policy)" if k > 0 else "start policy"}


def _runner(step, frame, sctx):
    return step.fn(frame, step.config, sctx)


# ------------------------------------------------------------------------------------------------ start policy
def start_policy(recipe: IterateRecipe, out: Path, texts: list[str]) -> tuple[str, dict]:
    """s_0 as a plain model folder (generation, training and extrapolation all read plain folders): a local
    model folder is used in place; a GGUF file, a LoRA adapter or a run's checkpoint is loaded once (merged,
    de-quantized) and saved under <output_dir>/start/policy."""
    from training.models import load_causal_lm, locate_model

    p = recipe.policy
    path = Path(p.path).expanduser()
    if p.make_tiny_model and not path.exists() and not p.path.startswith("package:"):
        from training.tiny import make_tiny_model
        make_tiny_model(path, texts, vocab_size=2000, seed=recipe.seed, hidden_size=64, intermediate_size=128,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    src = locate_model(p.path, gguf_file=p.gguf_file)
    if src.folder is not None and src.load == "pretrained":
        return str(Path(src.folder).resolve()), dict(src.info)
    dest = out / "start" / "policy"
    if not (dest / "config.json").is_file():
        lm, tok, _ = load_causal_lm(p.path, gguf_file=p.gguf_file, trust_remote_code=p.trust_remote_code)
        _save_model(lm, tok, dest)
    return str(dest.resolve()), dict(src.info)


def _save_model(lm, tok, dest: Path) -> None:
    """Save a plain model + tokenizer atomically (a killed save leaves no half folder behind)."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lm.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


# ------------------------------------------------------------------------------------------------ phases
def phase_generate(ctx: Ctx, k: int) -> dict:
    from builders.base import StepContext
    from builders.registry import STEPS
    from prefdata.build import run_step
    from prefdata.recipe import RecipeStep

    r, rnd = ctx.recipe, ctx.rnd(k)
    prompts = round_prompts(ctx.train_pool, per_round=r.prompts.per_round, fresh=r.prompts.fresh,
                            seed=r.prompts.seed if r.prompts.seed is not None else r.seed, round_=k)
    cfg = r.generate_config(rnd["policy"], k)
    config = {"round": k, "policy": rnd["policy"], "generate": cfg.model_dump(mode="json"),
              "prompt_ids_sha256": _sha(prompts["prompt_id"].to_list()), "recipe_sha256": r.config_sha256()}
    name = ctx.ds("generations")
    version = find_version(ctx.cat, name, ctx.key(k, "generate"))
    if version is None:
        spec = STEPS["generate"]
        step = RecipeStep("generate", cfg, spec, spec.load()[1], "generate")
        work = ctx.round_dir(k) / "work"
        sctx = StepContext(base_dir=r.base_dir, work_dir=work, catalog=ctx.cat, seed=r.seed, progress=ctx.progress)
        with _pause_when(ctx.out, f"generate@{k}", work, "generate-*/shard-*.parquet"):
            df, rep = run_step(step, prompts.lazy(), "prompts", sctx, _runner, file=r.file)
        inputs = [ctx.pool_input, rnd["policy"]]
        lin = _lineage(ctx, k, "generate", config=config, inputs=inputs, parent=_parent(ctx, k), rows_in=rep.rows_in,
                       rows_kept=rep.rows_kept, drops=rep.drops, info=rep.info)
        version = ctx.cat.write(name, df.to_arrow(), message=f"iterate {r.name} round {k}: samples of the policy",
                                lineage=lin)
        shutil.rmtree(work, ignore_errors=True)
    rows = ctx.cat.dataset(name, version).count_rows()
    ctx.say(f"  round {k} generate  {rows:,} samples for {prompts.height:,} prompts → {name}@{version}")
    return {"ref": f"{name}@{version}", "rows": rows, "prompts": prompts.height}


def phase_build(ctx: Ctx, k: int) -> dict:
    from builders.base import StepContext
    from prefdata.build import run_step

    r, rnd = ctx.recipe, ctx.rnd(k)
    gen_ref = rnd["phases"]["generate"]["ref"]
    steps = r.build_steps(rnd["policy"])
    config = {"round": k, "policy": rnd["policy"], "steps": [{s.name: s.config.model_dump(mode="json")} for s in steps],
              "recipe_sha256": r.config_sha256()}
    name = ctx.ds("data")
    version = find_version(ctx.cat, name, ctx.key(k, "build"))
    if version is None:
        work = ctx.round_dir(k) / "work"
        sctx = StepContext(base_dir=r.base_dir, work_dir=work, catalog=ctx.cat, seed=r.seed, progress=ctx.progress)
        df, kind, reports = pl.from_arrow(ctx.cat.read(gen_ref)), "responses", []
        for step in steps:
            df, rep = run_step(step, df.lazy(), kind, sctx, _runner, file=r.file)
            kind = rep.kind
            reports.append(rep)
            ctx.say(f"  round {k} {step.name:<9} {rep.summary or f'{rep.rows_out:,} rows'}")
        if df.height == 0:
            drops = {f"{rp.step}: {why}": n for rp in reports for why, n in rp.drops.items()}
            raise NoTrainingData(f"round {k}: the steps made no training {kind} from the {reports[0].rows_in:,} "
                                 f"samples of {gen_ref} (dropped: {', '.join(f'{n} {w}' for w, n in drops.items()) or 'none'}); "
                                 "nothing to train on: sample more (generate.n) or loosen the steps")
        drops: dict[str, int] = {}
        src_kind = "responses"
        for rp in reports:       # row accounting at the samples' granularity (as `prefdata build` counts it)
            if src_kind != "responses":
                break
            for why, n in rp.drops.items():
                drops[f"{rp.step}: {why}"] = drops.get(f"{rp.step}: {why}", 0) + n
            src_kind = rp.kind
        rows_in = reports[0].rows_in
        steps_lin = [{"step": rp.step, "config": rp.config, "rows_in": rp.rows_in, "rows_kept": rp.rows_kept,
                      "drops": rp.drops, "rows_out": rp.rows_out, "info": rp.info} for rp in reports]
        lin = _lineage(ctx, k, "build", config=config, inputs=[gen_ref, rnd["policy"]], parent=_parent(ctx, k),
                       rows_in=rows_in, rows_kept=rows_in - sum(drops.values()), drops=drops, steps=steps_lin,
                       rows_out=df.height)
        version = ctx.cat.write(name, df.to_arrow(), message=f"iterate {r.name} round {k}: training data from "
                                f"{gen_ref}", lineage=lin)
        _pause(ctx.out, f"build@{k}")
        shutil.rmtree(work, ignore_errors=True)
    table = ctx.cat.read(name, version)
    info = {"ref": f"{name}@{version}", "rows": table.num_rows, "kind": "pairs" if "chosen" in table.column_names
            else "lists", "cross_model_share": cross_model_share(table)}
    ctx.say(f"  round {k} build     {table.num_rows:,} {info['kind']} → {name}@{version}")
    return info


def cross_model_share(table) -> float | None:
    """Share of pairs whose chosen and rejected responses come from different models (None: not pairs, or no
    model columns)."""
    if not {"model_chosen", "model_rejected"} <= set(table.column_names) or table.num_rows == 0:
        return None
    a = np.asarray(table.column("model_chosen").to_pylist(), dtype=object)
    b = np.asarray(table.column("model_rejected").to_pylist(), dtype=object)
    return float(np.mean(a != b))


def train_recipe_data(ctx: Ctx, k: int) -> dict:
    r, rnd = ctx.recipe, ctx.rnd(k)
    t = r.train
    ref = {"free": {"free": True}, "initial": {"model": ctx.state["start"]["policy"]},
           "previous_round": {"model": rnd["policy"]}}[t.reference]
    data = {"model": rnd["policy"], "dataset": rnd["phases"]["build"]["ref"],
            "output_dir": str(ctx.round_dir(k) / "train"), "loss": t.loss, "train": t.train,
            "reference": {**ref, "batch_size": t.reference_batch_size}, "chat_template": t.chat_template}
    if t.lora is not None:
        data["lora"] = t.lora
    return data


def phase_train(ctx: Ctx, k: int) -> dict:
    import yaml

    from training.run import train_from_recipe

    rd = ctx.round_dir(k)
    rd.mkdir(parents=True, exist_ok=True)
    data = train_recipe_data(ctx, k)
    path = rd / "train.yaml"
    tmp = rd / ".train.yaml.tmp"
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)
    train_dir = Path(data["output_dir"])
    resume = (train_dir / "checkpoints").is_dir()
    with _pause_when(ctx.out, f"train@{k}", train_dir, "checkpoints/step-*[0-9]"):
        result = train_from_recipe(path, catalog_path=ctx.cat.root, resume=resume)
    last = result.get("last") or {}
    ctx.say(f"  round {k} train     {result['steps']} steps on {result['dataset']} · loss {last.get('loss', float('nan')):.4f}"
            f" → {train_dir}")
    return {"run_dir": str(train_dir), "final": result["final_model"], "checkpoint": result["checkpoint"],
            "dataset": result["dataset"], "steps": result["steps"], "config_sha256": result["config_sha256"],
            "recipe": str(path), "resumed_from": result.get("resumed_from", 0),
            "last": {key: last.get(key) for key in ("loss", "reward_accuracy", "margin") if key in last}}


def phase_policy(ctx: Ctx, k: int) -> dict:
    """x_k (the trained weights, a LoRA adapter merged) and the next round's policy s_{k+1} (APO)."""
    r, rnd = ctx.recipe, ctx.rnd(k)
    final = Path(rnd["phases"]["train"]["final"])
    rd = ctx.round_dir(k)
    if (final / "adapter_config.json").is_file():
        trained = rd / "trained"
        if not (trained / "config.json").is_file():
            from training.models import load_causal_lm
            lm, tok, _ = load_causal_lm(str(final))
            _save_model(lm, tok, trained)
    else:
        trained = final
    alpha = r.train.momentum
    if alpha == 0.0:
        nxt = trained
    else:
        prev = ctx.state["start"]["policy"] if k == 0 else ctx.rnd(k - 1)["phases"]["policy"]["trained"]
        nxt = rd / "next_policy"
        if not (nxt / "config.json").is_file():
            _extrapolate_dirs(Path(trained), Path(prev), alpha, nxt)
    info = {"trained": str(Path(trained).resolve()), "next_policy": str(Path(nxt).resolve()), "momentum": alpha,
            "previous_trained": None if alpha == 0.0 else str(prev)}
    ctx.say(f"  round {k} policy    next policy {info['next_policy']}"
            + (f" (APO: x_k + {alpha:g}·(x_k − x_k-1))" if alpha else ""))
    return info


def _extrapolate_dirs(current: Path, previous: Path, alpha: float, dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.apo import extrapolate_model

    cur = AutoModelForCausalLM.from_pretrained(current, dtype=torch.float32)
    prev = AutoModelForCausalLM.from_pretrained(previous, dtype=torch.float32)
    extrapolate_model(cur, prev, alpha)
    del prev
    _save_model(cur, AutoTokenizer.from_pretrained(current), dest)


def _baselines(ctx: Ctx, k: int) -> list[tuple[str, str]]:
    """(against, model path) of round k's evaluations; 'previous' of round 0 is the start policy again."""
    ev = ctx.recipe.eval
    out = []
    for against in ev.against:
        if against == "initial":
            out.append(("initial", ctx.state["start"]["policy"]))
        elif k > 0:
            out.append(("previous", ctx.rnd(k)["policy"]))
    return out


def eval_prompts_ref(ctx: Ctx) -> str:
    """The held-out prompts as a catalog version (written once; the same rows are never written twice)."""
    from catalog.hashing import content_hash

    name = ctx.ds("eval-prompts")
    table = ctx.eval_pool.to_arrow()
    if ctx.cat.exists(name):
        latest = ctx.cat.versions(name)[-1]
        if latest["content_hash"] == content_hash(table):
            return f"{name}@{latest['version']}"
    lin = {"builder": "iterate.eval_prompts", "recipe": ctx.recipe.file, "config": {"eval_prompts":
           ctx.recipe.prompts.eval_prompts.model_dump(mode="json")}, "inputs": [ctx.state["eval_input"]],
           "rows_in": table.num_rows, "rows_kept": table.num_rows, "rows_dropped": {}}
    v = ctx.cat.write(name, table, message=f"iterate {ctx.recipe.name}: held-out evaluation prompts", lineage=lin)
    return f"{name}@{v}"


def find_eval(cat, name: str, recipe_file: str) -> int | None:
    """The eval version an earlier (killed) attempt wrote from this round's eval recipe file: `prefdata eval`
    records the recipe file in the lineage, and each round and baseline has its own file."""
    if not cat.exists(name):
        return None
    for v in reversed(cat.versions(name)):
        if cat.lineage(name, v["version"]).get("recipe") == recipe_file:
            return int(v["version"])
    return None


def phase_eval(ctx: Ctx, k: int) -> dict:
    """`prefdata eval` of the round's checkpoint (s_{k+1}) against each baseline of `eval.against`, each from its
    own recipe file <round dir>/eval-<against>.yaml (kept: the exact evaluation can be rerun by hand)."""
    import yaml

    from prefdata.evaluate import run_eval

    rnd = ctx.rnd(k)
    model = rnd["phases"]["policy"]["next_policy"]
    name = ctx.ds("eval")
    out: dict[str, Any] = {}
    for i, (against, baseline) in enumerate(_baselines(ctx, k)):
        data = eval_recipe_data(ctx.recipe.eval, name=name, model=model, baseline=baseline,
                                prompts={"dataset": ctx.state["eval_prompts"]})
        path = ctx.round_dir(k) / f"eval-{against}.yaml"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
        os.replace(tmp, path)
        version = find_eval(ctx.cat, name, str(path))
        if version is None:
            version = run_eval(path, ctx.cat, progress=ctx.progress, warn=lambda m: ctx.say(f"  warning: {m}")).version
        if i == 0:
            _pause(ctx.out, f"eval@{k}")
        summary = ctx.cat.lineage(name, version)["eval"]["summary"]
        out[against] = {"ref": f"{name}@{version}", "baseline": baseline, "recipe": str(path), "summary": summary}
        lo, hi = summary["win_rate_ci"]
        ctx.say(f"  round {k} eval      vs {against}: win rate {summary['win_rate']:.3f} [{lo:.3f}, {hi:.3f}] "
                f"→ {name}@{version}")
    return out


# ------------------------------------------------------------------------------------------------ record
def round_metrics(ctx: Ctx, k: int) -> dict:
    rnd = ctx.rnd(k)
    ph = rnd["phases"]
    m: dict[str, Any] = {"round": k, "policy": rnd["policy"], "checkpoint": ph["policy"]["next_policy"],
                         "trained": ph["policy"]["trained"], "prompts": ph["generate"]["prompts"],
                         "samples": ph["generate"]["rows"], "generations": ph["generate"]["ref"],
                         "data": ph["build"]["ref"], "pairs": ph["build"]["rows"],
                         "cross_model_share": ph["build"]["cross_model_share"],
                         "train": {"steps": ph["train"]["steps"], "dataset": ph["train"]["dataset"],
                                   **ph["train"]["last"]},
                         "seconds": dict(rnd["seconds"])}
    ev = ph.get("eval") or {}
    verifiers = _verifier_scorers(ctx)
    if "initial" in ev:
        s = ev["initial"]["summary"]
        m["win_rate_vs_start"] = s["win_rate"]
        m["win_rate_vs_start_ci"] = s["win_rate_ci"]
        m["lc_win_rate_vs_start"] = s.get("lc_win_rate")
        m["kl_to_start"] = s["kl"]["mean"] if s.get("kl") else None
        m["kl_to_start_se"] = s["kl"]["se"] if s.get("kl") else None
        m["mean_length"] = s["length"]["model"]["mean"]
        m["scorers"] = {n: v["model_mean"] for n, v in s["scorers"].items()}
        m["pass_rate"] = {n: s["scorers"][n]["model_mean"] for n in verifiers if n in s["scorers"]}
        m.update(_verifier_intervals(ctx, ev["initial"]["ref"], verifiers))
    if "previous" in ev:
        s = ev["previous"]["summary"]
        m["win_rate_vs_previous"] = s["win_rate"]
        m["win_rate_vs_previous_ci"] = s["win_rate_ci"]
    m["eval"] = {a: v["ref"] for a, v in ev.items()}
    return m


def _verifier_intervals(ctx: Ctx, eval_ref: str, verifiers: list[str]) -> dict:
    """Per verifier scorer of the evaluation against the start policy: the pass rate's bootstrap interval, and the
    gain over the start policy on the same prompts (mean of model − start per prompt) with its paired bootstrap
    interval (prompts resampled, the eval's bootstrap settings)."""
    from prefdata.eval_metrics import bootstrap_ci

    if not verifiers:
        return {}
    boot = ctx.recipe.eval.config.get("bootstrap") or {}
    n_boot, seed = int(boot.get("n", 2000)), int(boot.get("seed", 0))
    table = ctx.cat.read(eval_ref)
    rate_ci, gain = {}, {}
    for name in verifiers:
        if f"score_{name}" not in table.column_names:
            continue
        m = np.asarray(table.column(f"score_{name}").to_pylist(), dtype=np.float64)
        b = np.asarray(table.column(f"baseline_score_{name}").to_pylist(), dtype=np.float64)
        rate_ci[name] = list(bootstrap_ci(m, n_boot=n_boot, seed=seed))
        gain[name] = {"gain": float(np.mean(m - b)), "ci": list(bootstrap_ci(m - b, n_boot=n_boot, seed=seed))}
    return {"pass_rate_ci": rate_ci, "pass_rate_gain_vs_start": gain}


def _verifier_scorers(ctx: Ctx) -> list[str]:
    if ctx.recipe.eval is None:
        return []
    return [s["name"] for s in ctx.recipe.eval.config.get("scorers", []) if s.get("kind") in VERIFIER_KINDS]


def _start_metrics(ctx: Ctx) -> dict:
    """The start policy's own held-out numbers: the baseline side of round 0's evaluation against it."""
    out = {"policy": ctx.state["start"]["policy"], "info": ctx.state["start"].get("info")}
    ev = (ctx.rnd(0)["phases"].get("eval") or {}).get("initial") if ctx.state["rounds"] else None
    if ev:
        s = ev["summary"]
        out["mean_length"] = s["length"]["baseline"]["mean"]
        out["scorers"] = {n: v["baseline_mean"] for n, v in s["scorers"].items()}
        out["pass_rate"] = {n: s["scorers"][n]["baseline_mean"] for n in _verifier_scorers(ctx) if n in s["scorers"]}
        out["win_rate_vs_start"] = 0.5
    return out


def stop_metric(ctx: Ctx, k: int) -> float | None:
    st = ctx.recipe.stop
    ev = (ctx.rnd(k)["phases"].get("eval") or {}).get("initial")
    if st is None or ev is None:
        return None
    s = ev["summary"]
    return float(s["win_rate"]) if st.metric == "win_rate" else float(s["scorers"][st.metric]["model_mean"])


def _start_value(ctx: Ctx) -> float:
    st = ctx.recipe.stop
    s = ctx.rnd(0)["phases"]["eval"]["initial"]["summary"]
    return 0.5 if st.metric == "win_rate" else float(s["scorers"][st.metric]["baseline_mean"])


def phase_record(ctx: Ctx, k: int) -> dict:
    import pyarrow as pa

    m = round_metrics(ctx, k)
    done = [round_metrics(ctx, j) for j in range(k)] + [m]
    summary = {"name": ctx.recipe.name, "recipe": ctx.recipe.file, "recipe_sha256": ctx.recipe.config_sha256(),
               "start": _start_metrics(ctx), "rounds": done, "stopped": None}
    decision = None
    if ctx.recipe.stop is not None:
        now = stop_metric(ctx, k)
        before = _start_value(ctx) if k == 0 else stop_metric(ctx, k - 1)
        gain = now - before
        m["stop_metric"] = {"name": ctx.recipe.stop.metric, "value": now, "previous": before, "gain": gain}
        if gain < ctx.recipe.stop.min_gain:
            decision = {"round": k, "reason": f"{ctx.recipe.stop.metric} gained {gain:+.4f} over the previous round "
                        f"(< min_gain {ctx.recipe.stop.min_gain:g})"}
    summary["stopped"] = decision
    _atomic_json(ctx.out / ROUNDS_FILE, summary)

    name = ctx.ds("rounds")
    key = ctx.key(k, "record")
    version = find_version(ctx.cat, name, key)
    rows = [{"round": x["round"], "checkpoint": x["checkpoint"], "parent": x["policy"], "pairs": x["pairs"],
             "samples": x["samples"], "win_rate_vs_start": x.get("win_rate_vs_start"),
             "win_rate_vs_previous": x.get("win_rate_vs_previous"), "kl_to_start": x.get("kl_to_start"),
             "mean_length": x.get("mean_length"), "cross_model_share": x.get("cross_model_share"),
             "metrics": json.dumps({kk: vv for kk, vv in x.items() if kk != "seconds"}, sort_keys=True, default=str)}
            for x in done]
    if version is None:
        inputs = [m["generations"], m["data"], *m["eval"].values(), m["policy"], m["checkpoint"]]
        config = {"round": k, "recipe_sha256": ctx.recipe.config_sha256(), "policy": m["policy"],
                  "checkpoint": m["checkpoint"], "train": train_recipe_data(ctx, k)}
        lin = _lineage(ctx, k, "record", config=config, inputs=inputs, parent=_parent(ctx, k), rows_in=len(rows),
                       rows_kept=len(rows), drops={}, checkpoint={"round": k, "path": m["checkpoint"],
                                                                 "train_run": ctx.rnd(k)["phases"]["train"]["run_dir"]},
                       metrics={kk: vv for kk, vv in m.items() if kk != "seconds"}, start=summary["start"],
                       seconds={str(x["round"]): x["seconds"] for x in done}, stopped=decision)
        version = ctx.cat.write(name, pa.Table.from_pylist(rows), message=f"iterate {ctx.recipe.name}: round {k} "
                                f"(parent {m['policy']})", lineage=lin)
    # the checkpoint as an event on the data it was trained on (`prefdata log <name>-data` shows the chain)
    train_ds = ctx.rnd(k)["phases"]["train"]["dataset"]
    ds_name, _, ds_version = train_ds.rpartition("@")
    record = {"round": k, "checkpoint": m["checkpoint"], "trained": m["trained"], "parent": m["policy"],
              "rounds": f"{name}@{version}", "win_rate_vs_start": m.get("win_rate_vs_start")}
    if not any(e["kind"] == "iterate_round" and e["record"].get("round") == k and e["record"].get("checkpoint")
               == m["checkpoint"] for e in ctx.cat.events(ds_name)):
        ctx.cat.log_event(ds_name, int(ds_version), "iterate_round", record)
    return {"ref": f"{name}@{version}", "stopped": decision}


PHASE_FN = {"generate": phase_generate, "build": phase_build, "train": phase_train, "policy": phase_policy,
            "eval": phase_eval, "record": phase_record}


# ------------------------------------------------------------------------------------------------ the loop
def _pools(recipe: IterateRecipe, cat) -> tuple[pl.DataFrame, pl.DataFrame | None, str, str | None]:
    from prefdata.iterate_recipe import HoldoutSpec

    p = recipe.prompts
    pool, pool_input = load_pool(p.source, base_dir=recipe.base_dir, catalog=cat, where="prompts.source")
    ev = p.eval_prompts
    seed = p.seed if p.seed is not None else recipe.seed
    if ev is None:
        return pool, None, pool_input, None
    if isinstance(ev, HoldoutSpec):
        train, held = holdout(pool, ev.holdout, seed)
        eval_input = f"{pool_input} (holdout {ev.holdout}, seed {seed})"
    else:
        train, (held, eval_input) = pool, load_pool(ev, base_dir=recipe.base_dir, catalog=cat,
                                                    where="prompts.eval_prompts")
    check_disjoint(train, held, path="prompts.eval_prompts", file=recipe.file)
    if p.per_round is not None and p.per_round > train.height:
        from prefdata.errors import RecipeError
        raise RecipeError(f"per_round {p.per_round} exceeds the {train.height} training prompts", path="prompts.per_round",
                          file=recipe.file)
    return train, held, pool_input, eval_input


def iterate(recipe_path: str | Path, *, catalog, resume: bool = False, progress: bool = True, console=None) -> dict:
    """Run (or resume) the rounds of an iterate recipe into `catalog` (a Catalog); returns rounds.json's content."""
    from rich.console import Console

    console = console or Console(stderr=True, highlight=False, quiet=not progress)
    recipe = load_iterate_recipe(recipe_path)
    # everything about the data is checked before any model is loaded
    train_pool, eval_pool, pool_input, eval_input = _pools(recipe, catalog)
    out = recipe.output_dir
    state_path = out / STATE_FILE
    if state_path.exists():
        if not resume:
            raise PrefdataError(f"{out} holds an iterate run: resume it (--resume) or choose another output_dir")
        state = json.loads(state_path.read_text())
        if state.get("recipe_sha256") != recipe.config_sha256():
            raise PrefdataError(f"cannot resume {out}: the recipe changed since the run started (config "
                                f"{state.get('recipe_sha256', '?')[:12]}… vs {recipe.config_sha256()[:12]}…); resume "
                                "with the recipe it was started with, or choose another output_dir")
    else:
        state = {"recipe_sha256": recipe.config_sha256(), "recipe": recipe.file, "rounds": [], "stopped": None}
    out.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(recipe, catalog, state, out, train_pool, eval_pool, pool_input, console, progress)
    ctx.say(f"iterate {recipe.name}: {recipe.rounds} round(s), {train_pool.height:,} training prompts"
            + (f", {eval_pool.height:,} held out" if eval_pool is not None else "") + f" → {out}")
    if "start" not in state:
        texts = train_pool["prompt"].to_list() + (eval_pool["prompt"].to_list() if eval_pool is not None else [])
        policy, info = start_policy(recipe, out, texts)
        state["start"] = {"policy": policy, "info": info}
        state["eval_input"] = eval_input
        ctx.save()
    if eval_pool is not None and "eval_prompts" not in state:
        state["eval_prompts"] = eval_prompts_ref(ctx)
        ctx.save()
    for k in range(recipe.rounds):
        if state.get("stopped") is not None and state["stopped"]["round"] < k:
            break
        rnd = ctx.rnd(k)
        if "policy" not in rnd:
            rnd["policy"] = state["start"]["policy"] if k == 0 else ctx.rnd(k - 1)["phases"]["policy"]["next_policy"]
            ctx.save()
        for phase in PHASES:
            if phase in rnd["phases"] or (phase == "eval" and recipe.eval is None):
                continue
            t0 = time.perf_counter()
            try:
                result = PHASE_FN[phase](ctx, k)
            except NoTrainingData as e:
                state["failed"] = {"round": k, "reason": str(e)}
                ctx.save()
                raise
            rnd["phases"][phase] = result
            rnd["seconds"][phase] = round(time.perf_counter() - t0, 3)
            if phase == "record" and result.get("stopped"):
                state["stopped"] = result["stopped"]
            ctx.save()
        if state.get("stopped") is not None:
            ctx.say(f"stopped after round {k}: {state['stopped']['reason']}")
            break
    summary = json.loads((out / ROUNDS_FILE).read_text())
    state["finished"] = True
    ctx.save()
    return summary
