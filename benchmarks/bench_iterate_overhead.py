"""What `prefdata iterate` adds over running a round's phases by hand (one JSON line).

One round of examples/recipes/iterate_tiny.yaml (a tiny random Llama, CPU) run two ways in this process, twice
each, alternating: (a) `prefdata iterate` with rounds: 1; (b) the same work "by hand" with the commands a user
would chain — `prefdata build` of a recipe whose steps are the round's generate step followed by the iterate
recipe's steps (source: the round's prompts, stored as a dataset), `prefdata train` of the round's train recipe,
`prefdata eval` against the start model. Reported: median wall time of each, the relative overhead, and the
iterate run's time per phase. The loop's own work is catalog look-ups by lineage, the state file, the per-round
prompt sampling and the rounds table/report files: fixed costs, so on this tiny model they are the largest share
they will ever be; on a real model the phases dominate.

    python benchmarks/bench_iterate_overhead.py [--recipe examples/recipes/iterate_tiny.yaml] [--reps 2]"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _forget_loaded_models() -> None:
    import builders.backends as b
    b._LOADED.clear()      # the generate step keeps the last models loaded: each run must load its own


def by_hand(recipe_path: Path, work: Path, cat) -> float:
    from prefdata.build import run_recipe
    from prefdata.evaluate import run_eval
    from prefdata.iterate import Ctx, _pools, start_policy, train_recipe_data
    from prefdata.iterate_recipe import eval_recipe_data, load_iterate_recipe
    from prefdata.prompt_pool import round_prompts
    from training.run import train_from_recipe

    _forget_loaded_models()
    work.mkdir(parents=True, exist_ok=True)
    r = load_iterate_recipe(recipe_path)
    t0 = time.perf_counter()
    train, held, _, _ = _pools(r, cat)      # what `prefdata ingest` of the prompt files would do
    policy, _ = start_policy(r, work, [])
    prompts = round_prompts(train, per_round=r.prompts.per_round, fresh=r.prompts.fresh, seed=r.seed, round_=0)
    pname, ename = f"{work.name}-prompts", f"{work.name}-eval-prompts"
    cat.write(pname, prompts.to_arrow(), message="round 0 prompts")
    cat.write(ename, held.to_arrow(), message="held-out prompts")
    gen = r.generate_config(policy, 0).model_dump(mode="json", exclude_defaults=False)
    build = {"name": f"{work.name}-data", "seed": r.seed, "source": {"dataset": pname},
             "steps": [{"generate": gen}, *r.steps]}
    (work / "build.yaml").write_text(yaml.safe_dump(build, sort_keys=False))
    res = run_recipe(work / "build.yaml", cat, progress=False)
    ctx = Ctx(r, cat, {"start": {"policy": policy}, "rounds": [{"round": 0, "policy": policy, "phases": {
        "build": {"ref": f"{res.name}@{res.version}"}}, "seconds": {}}]}, work, train, held, "", None, False)
    data = train_recipe_data(ctx, 0) | {"output_dir": str(work / "train")}
    (work / "train.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    out = train_from_recipe(work / "train.yaml", catalog_path=cat.root)
    ev = eval_recipe_data(r.eval, name=f"{work.name}-eval", model=out["final_model"], baseline=policy,
                          prompts={"dataset": ename})
    (work / "eval.yaml").write_text(yaml.safe_dump(ev, sort_keys=False))
    run_eval(work / "eval.yaml", cat, progress=False)
    return time.perf_counter() - t0


def with_iterate(recipe_path: Path, work: Path, cat) -> tuple[float, dict]:
    from prefdata.iterate import iterate

    _forget_loaded_models()
    data = yaml.safe_load(recipe_path.read_text())
    data.update(name=work.name, output_dir=str(work / "out"), rounds=1)
    data["eval"]["against"] = ["initial"]
    src = data["prompts"]["source"]
    if "path" in src:
        src["path"] = str((recipe_path.parent / src["path"]).resolve())
    work.mkdir(parents=True, exist_ok=True)
    path = work / "iterate.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    t0 = time.perf_counter()
    summary = iterate(path, catalog=cat, progress=False)
    return time.perf_counter() - t0, summary["rounds"][0]["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, default=ROOT / "examples" / "recipes" / "iterate_tiny.yaml")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    import torch
    torch.set_num_threads(a.threads)
    from catalog import Catalog

    root = Path(tempfile.mkdtemp(prefix="bench-iterate-"))
    cat = Catalog.open(root / "cat")
    recipe = yaml.safe_load(a.recipe.read_text())
    # the tiny model is built once (make_tiny_model) where the recipe says; both ways then use the same folder
    pol = recipe["policy"]
    if pol.get("make_tiny_model"):
        pol["path"] = str(root / "model")
    recipe["prompts"]["source"]["path"] = str((a.recipe.parent / recipe["prompts"]["source"]["path"]).resolve())
    fixed = root / "recipe.yaml"
    fixed.write_text(yaml.safe_dump(recipe, sort_keys=False))
    hand, loop, phases = [], [], []
    with_iterate(fixed, root / "warm", cat)         # warm-up: imports, the tiny model, caches
    for i in range(a.reps):
        hand.append(by_hand(fixed, root / f"hand{i}", cat))
        t, sec = with_iterate(fixed, root / f"loop{i}", cat)
        loop.append(t)
        phases.append(sec)
    shutil.rmtree(root, ignore_errors=True)
    h, lo = statistics.median(hand), statistics.median(loop)
    print(json.dumps({"bench": "iterate_overhead", "recipe": str(a.recipe.relative_to(ROOT)), "reps": a.reps,
                      "threads": a.threads, "by_hand_s": [round(x, 2) for x in hand],
                      "iterate_s": [round(x, 2) for x in loop], "median_by_hand_s": round(h, 2),
                      "median_iterate_s": round(lo, 2), "overhead_pct": round(100 * (lo - h) / h, 1),
                      "iterate_phase_s": phases[-1]}))


if __name__ == "__main__":
    main()
